"""Who answers a routed step: the base model or its adapter, under each rule.

    python benchmarks/bench_contest.py --data ../shared/data/gsm8k/train.jsonl
        [--db sage.db] [--run 100] [--problems 60] [--seed 1]
        [--out benchmarks/results/contest.md]

The adapters are those of ``sage-agent run --data FILE --limit RUN`` with the CLI's
defaults: the run is made in a temporary folder first, unless ``--db`` names the database
of such a run. The steps are the atomic steps (references substituted) of ``--problems``
problems drawn with ``--seed`` from the file's last 1,500 lines, none of them the run's
or one of bench_cli.py's eval problems (so the rule is not chosen on what bench_cli
measures). Per step the base model answers, and, where the router routes the step, the
routed adapter answers too; each answer's confidence is the log-probability of its number
(``Router.confidence``). Then every rule is scored on the same answers: exact match, the
wrong base steps it fixes, the right base steps it loses, and NER (the share of right
base steps kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import results_header, write_results
from langchain_core.messages import HumanMessage
from tqdm import tqdm

from sage_agent import SageAgent
from sage_agent.errors import MalformedTask
from sage_agent.scoring.numeric import parse_number
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT, steps_from_gsm8k

RESULTS = Path(__file__).resolve().parent / "results"
UNSURE = -1.0  # RouterConfig.route_below's default

Step = dict[str, object]
Rule = Callable[[Step], bool]


def _lp(value: object) -> float:
    return -math.inf if value is None else float(value)  # type: ignore[arg-type]


def _unsure(step: Step) -> bool:
    return _lp(step["base_lp"]) < UNSURE


def _surer(step: Step, by: float = 0.0) -> bool:
    return _lp(step["adapter_lp"]) > _lp(step["base_lp"]) + by


RULES: dict[str, Rule] = {
    "the adapter answers when the base model is unsure or it routes all (before)": (
        lambda s: bool(s["route_all"]) or _unsure(s)
    ),
    "the adapter answers every routed step": lambda s: True,
    "the adapter's answer stands where it is surer": _surer,
    "the adapter answers when unsure or it routes all, and stands where surer (the contest)": (
        lambda s: (bool(s["route_all"]) or _unsure(s)) and _surer(s)
    ),
    "the adapter answers when the base model is unsure, and stands where surer": (
        lambda s: _unsure(s) and _surer(s)
    ),
    "the adapter answers when the base model is unsure; where it routes all, stands where "
    "surer": lambda s: _unsure(s) or (bool(s["route_all"]) and _surer(s)),
    **{
        f"the contest, the adapter surer by {by} or more": (
            lambda s, by=by: (bool(s["route_all"]) or _unsure(s)) and _surer(s, by)
        )
        for by in (0.25, 0.5, 1.0)
    },
    **{
        f"the contest, or the base model unsure below {below}": (
            lambda s, below=below: (bool(s["route_all"]) and _surer(s)) or _lp(s["base_lp"]) < below
        )
        for below in (-2.0, -4.0)
    },
}


def held_out_problems(data: Path, run: int, count: int, seed: int) -> list[str]:
    lines = [line for line in data.read_text().splitlines() if line.strip()]
    measured_by_bench_cli = set(random.Random(0).sample(lines[run:], 100))
    excluded = measured_by_bench_cli | set(lines[:run])
    pool = [line for line in lines[-1500:] if line not in excluded]
    return random.Random(seed).sample(pool, count)


def right(text: str, reference: str) -> bool:
    value = parse_number(text)
    return value is not None and math.isclose(value, float(reference), rel_tol=1e-9, abs_tol=1e-9)


def answers(db: Path, problems: list[str]) -> list[Step]:
    """Base and routed adapter's answer, with their confidences, for every step."""
    agent = SageAgent(db)
    chat, store = agent.model, agent.store
    found: list[Step] = []

    def ask(prompt: str, adapter: str | None) -> tuple[str, float | None]:
        message = chat.invoke([HumanMessage(prompt)], adapter=adapter, max_tokens=ANSWER_MAX_TOKENS)
        return message.text, store.router.confidence(message)

    for i, line in enumerate(tqdm(problems, desc="problems", unit="problem")):
        try:
            steps = steps_from_gsm8k(json.loads(line), task_id=str(i))
        except MalformedTask:
            continue
        for step in steps:
            if not step.expression or step.reference is None:
                continue
            prompt = ATOMIC_PROMPT.format(expression=step.expression)
            base, base_lp = ask(prompt, None)
            route = store.policy.route(prompt, tag=step.tag)
            row: Step = {"tag": step.tag, "base_ok": right(base, step.reference)}
            row.update(base_lp=base_lp, routed=route.adapter is not None)
            row["route_all"] = route.route_all
            if route.adapter is not None:
                with store.policy.loaded(route.adapter) as (name, _):
                    adapted, adapted_lp = ask(prompt, name)
                row.update(adapter_ok=right(adapted, step.reference), adapter_lp=adapted_lp)
            found.append(row)
    return found


def table(steps: list[Step]) -> list[str]:
    base_right = sum(bool(s["base_ok"]) for s in steps)
    lines = [
        "| rule | step EM | change | fixed | lost | NER |",
        "|---|---|---|---|---|---|",
        f"| the base model alone | {base_right / len(steps):.3f} | | | | |",
    ]
    for name, rule in RULES.items():
        fixed = lost = 0
        for step in steps:
            used = bool(step["routed"]) and rule(step)
            ok = bool(step["adapter_ok"]) if used else bool(step["base_ok"])
            fixed += ok and not step["base_ok"]
            lost += bool(step["base_ok"]) and not ok
        change = (fixed - lost) / len(steps)
        ner = (base_right - lost) / base_right if base_right else math.nan
        lines.append(
            f"| {name} | {(base_right + fixed - lost) / len(steps):.3f} | {change:+.3f} | "
            f"{fixed} | {lost} | {ner:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--db", type=Path, help="the database of a `sage-agent run`")
    parser.add_argument("--run", type=int, default=100, help="problems of that run")
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "contest.md")
    args = parser.parse_args()
    problems = held_out_problems(args.data, args.run, args.problems, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        db = args.db
        if db is None:
            db = Path(folder) / "sage.db"
            command = ["run", "--data", str(args.data), "--limit", str(args.run), "--db", str(db)]
            subprocess.run([sys.executable, "-m", "sage_agent.app.cli", *command], check=True)
        steps = answers(db, problems)
    routed = [s for s in steps if s["routed"]]
    setting = (
        f"Adapters: `sage-agent run --data {args.data.name} --limit {args.run}` (the CLI's "
        f"defaults). Steps: {len(steps)} atomic steps of {args.problems} other problems "
        f"(seed {args.seed}); {len(routed)} routed to an adapter, "
        f"{sum(bool(s['route_all']) for s in routed)} of them to one that routes all. The "
        f"base model's answer counts as unsure below a log-probability of {UNSURE} for its "
        "number; an answer that gives no number is never surer."
    )
    lines = results_header("The contest: who answers a routed step", setting)
    write_results(args.out, [*lines, *table(steps)])


if __name__ == "__main__":
    main()
