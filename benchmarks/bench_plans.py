"""How well does the embedded model plan GSM8K problems it is given as questions only?

    python benchmarks/bench_plans.py --data ../shared/data/gsm8k/train.jsonl
        [--seed 0] [--problems 40] [--adapt 0] [--out benchmarks/results/plans.md]

Problems of the GSM8K training split, shuffled with ``--seed``, run through the SAGE graph
with ``LLMDecomposer`` on the embedded SmolLM2-135M (its few-shot plan prompt), the model
answering every step with earlier answers substituted (``substitute="answers"``: a real
agent), no training and no adapters. The worked solution is used only to score:

- plans parsed: the share of questions whose plan has at least one computable step;
- plan accuracy: the share whose plan's last step, computed by the verifier, is the gold
  final answer (only the plan is judged);
- final-answer EM: the share the agent answers right end to end;
- step EM: the model's step answers against the plan's own values (the verifier's).

With ``--adapt N``, N other problems are streamed first with adaptation on (the CLI's
defaults): failed plans go to the buffer and train planner adapters, failed steps train
step adapters; then the held-out problems run with the base model alone and with the
adapters routed (nothing trained), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import results_header

from sage_agent import SageAgent
from sage_agent.data import read_tasks
from sage_agent.decompose import LLMDecomposer
from sage_agent.numeric import numbers_match, parse_number
from sage_agent.plans import PLAN_TAG
from sage_agent.steps import final_answer


def plan_figures(agent: SageAgent, threads: list[str], seconds: float) -> dict[str, float]:
    """Plans parsed, plan accuracy, final-answer EM, step EM over ``threads``; and the
    errors of the plans that did not parse, under "failures"."""
    parsed = planned_right = solved = steps = steps_right = 0
    failures: list[str] = []
    for thread in threads:
        values = agent.state(thread)
        result, records = values["result"], values.get("records") or []
        if result["error"]:
            failures.append(result["error"][:160])
            continue
        parsed += 1
        gold = parse_number(final_answer(values["task"]["answer"]))
        planned_right += numbers_match(parse_number(values["steps"][-1]["reference"]), gold)
        solved += bool(result["correct"])
        steps += len(records)
        steps_right += sum(r["first_passed"] for r in records)
    n = len(threads)
    return {
        "problems": n,
        "plans parsed": parsed / n,
        "plan accuracy": planned_right / n,
        "final-answer EM": solved / n,
        "steps": steps,
        "step EM": steps_right / steps if steps else 0.0,
        "seconds per problem": seconds / n,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=40, help="held-out problems")
    parser.add_argument(
        "--adapt", type=int, default=0, help="stream this many problems first, adapting"
    )
    parser.add_argument("--db", type=Path, default=Path("bench-plans.db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plans.md"))
    args = parser.parse_args()

    tasks = read_tasks(args.data)
    random.Random(args.seed).shuffle(tasks)
    tasks = [{**t, "id": f"plan-{args.seed}-{i}"} for i, t in enumerate(tasks)]
    stream, heldout = tasks[: args.adapt], tasks[args.adapt : args.adapt + args.problems]
    for path in (args.db, Path(f"{args.db}-wal"), Path(f"{args.db}-shm")):
        path.unlink(missing_ok=True)
    agent = SageAgent(args.db, substitute="answers")
    agent.configure(decomposer=LLMDecomposer(agent.model))
    columns: dict[str, dict] = {}
    if stream:  # the CLI's defaults: the buffer, the store and the search as they come
        started = time.perf_counter()
        summary = agent.run(stream, train=True, route=True)
        columns["stream, adapting"] = plan_figures(
            agent, summary.threads, time.perf_counter() - started
        )
    modes = {"base model": False, "planner adapters": True} if stream else {"base model": False}
    for name, route in modes.items():
        started = time.perf_counter()
        summary = agent.run(heldout, train=False, route=route)
        columns[name] = plan_figures(agent, summary.threads, time.perf_counter() - started)
    print(
        json.dumps({k: {m: v for m, v in c.items() if m != "failures"} for k, c in columns.items()})
    )
    planners = [a for a in agent.store.adapters() if a.tag == PLAN_TAG]
    lines = results_header(
        "Plans of the embedded model on GSM8K questions",
        f"Seed {args.seed}: problems of the training split given as questions only; the "
        "embedded SmolLM2-135M plans (LLMDecomposer) and answers every step"
        + (
            f"; {len(stream)} streamed with adaptation (CLI defaults), then "
            f"{len(heldout)} held out, with and without the {len(planners)} planner "
            "adapters it trained."
            if stream
            else f"; {len(heldout)} problems, no adaptation."
        ),
    )
    names = list(columns)
    lines += ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for figure in next(iter(columns.values())):
        if figure == "failures":
            continue
        cells = [_shown(columns[n][figure]) for n in names]
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    for name in names:
        lines += ["", f"Plans that did not parse, {name} (the decomposer's error, cut):", ""]
        lines += [f"- `{failure}`" for failure in columns[name]["failures"]] or ["- none"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def _shown(value: float) -> str:
    return f"{value:.1%}" if isinstance(value, float) and value <= 1 else f"{value:.3g}"


if __name__ == "__main__":
    main()
