"""Where the embedded model's plans end, and what a second prompt gives the ones that do
not parse.

    python benchmarks/bench_plan_stops.py --data ../shared/data/gsm8k/train.jsonl
        [--start 7200] [--problems 40] [--out benchmarks/results/plan_stops.md]

GSM8K problems (lines ``--start`` on of the file) given as questions only. The embedded
SmolLM2-135M writes each plan with the planner's prompt (``plans.plan_prompt``), to
``PLAN_MAX_TOKENS`` or the first blank line (``PLAN_STOP``), twice: as before, and with
``stop_repeated_line`` (generation ends before the first line that repeats an earlier
one), as ``LLMDecomposer`` now asks. Per way: plans parsed, plan accuracy (the plan's
last step, computed by the verifier, is the gold final answer), plans that ran to the
token cap, tokens and seconds. Then the plans that did not parse are asked for with the
decomposer's second prompt (``decompose.RETRY_PLAN_PROMPTS``, other example problems).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import PLANS_HELD_OUT, gold_plans, results_header

from sage_agent import ChatSage
from sage_agent.tasks.decompose import RETRY_PLAN_PROMPTS
from sage_agent.tasks.plans import (
    PLAN_MAX_TOKENS,
    PLAN_STOP,
    plan_matches,
    plan_prompt,
    plan_result,
)


@dataclass
class Plan:
    parsed: bool
    right: bool
    tokens: int
    capped: bool
    seconds: float


def write_plan(chat: ChatSage, prompt: str, gold: str | None, repeated: bool) -> Plan:
    started = time.perf_counter()
    message = chat.invoke(
        prompt, stop=list(PLAN_STOP), max_tokens=PLAN_MAX_TOKENS, stop_repeated_line=repeated
    )
    seconds = time.perf_counter() - started
    parsed = plan_result(message.text) is not None
    return Plan(
        parsed=parsed,
        right=parsed and gold is not None and plan_matches(message.text, gold),
        tokens=message.usage_metadata["output_tokens"],
        capped=message.response_metadata["finish_reason"] == "length",
        seconds=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--start", type=int, default=PLANS_HELD_OUT.start, help="first line of the file used"
    )
    parser.add_argument("--problems", type=int, default=PLANS_HELD_OUT.stop - PLANS_HELD_OUT.start)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plan_stops.md"))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file at once
    lines = args.data.read_text().splitlines()[args.start : args.start + args.problems]
    tasks, golds = zip(*gold_plans(lines), strict=True)
    chat = ChatSage()
    chat.invoke("Hello", max_tokens=1)  # the weights load before any plan is timed
    ways: dict[str, list[Plan]] = {"to the cap or a blank line": [], "stop_repeated_line": []}
    retried: list[Plan] = []
    for number, (task, gold) in enumerate(zip(tasks, golds, strict=True), start=1):
        for way, repeated in zip(ways, (False, True), strict=True):
            ways[way].append(write_plan(chat, plan_prompt(task["question"]), gold, repeated))
        if not ways["stop_repeated_line"][-1].parsed:
            retried.append(write_plan(chat, RETRY_PLAN_PROMPTS[0](task["question"]), gold, True))
        print(f"{number}/{len(tasks)}: " + ", ".join(f"{w}: {p[-1]}" for w, p in ways.items()))
    graded = sum(gold is not None for gold in golds)
    rows = [
        "| plans written | parsed | right (of those with a gold plan) | at the token cap "
        "| tokens, mean | seconds, mean |",
        "|---|---|---|---|---|---|",
    ]
    for way, plans in ways.items():
        rows.append(
            f"| {way} | {sum(p.parsed for p in plans)}/{len(plans)} "
            f"| {sum(p.right for p in plans)}/{graded} | {sum(p.capped for p in plans)} "
            f"| {sum(p.tokens for p in plans) / len(plans):.1f} "
            f"| {sum(p.seconds for p in plans) / len(plans):.2f} |"
        )
    setting = (
        f"{len(tasks)} GSM8K problems (lines {args.start + 1}-{args.start + len(tasks)} of "
        f"the file) as questions; {graded} have a gold plan (their annotations compute the "
        "answer). The embedded SmolLM2-135M, greedy, the planner's prompt."
    )
    lines_out = [
        *results_header("Where plans end", setting),
        *rows,
        "",
        f"Second prompt (other example problems) for the {len(retried)} plans that did not "
        f"parse with stop_repeated_line: {sum(p.parsed for p in retried)} parsed, "
        f"{sum(p.right for p in retried)} right.",
        "",
    ]
    args.out.write_text("\n".join(lines_out))
    print("\n".join(lines_out))


if __name__ == "__main__":
    main()
