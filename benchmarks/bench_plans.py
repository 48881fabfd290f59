"""How well does the embedded model plan GSM8K problems it is given as questions only?

    python benchmarks/bench_plans.py --data ../shared/data/gsm8k/train.jsonl
        [--seed 0] [--problems 40] [--out benchmarks/results/plans.md]

Problems of the GSM8K training split, shuffled with ``--seed``, run through the SAGE graph
with ``LLMDecomposer`` on the embedded SmolLM2-135M (its few-shot plan prompt), the model
answering every step with earlier answers substituted (``substitute="answers"``: a real
agent), no training and no adapters. The worked solution is used only to score:

- plans parsed: the share of questions whose plan has at least one computable step;
- plan accuracy: the share whose plan's last step, computed by the verifier, is the gold
  final answer (only the plan is judged);
- final-answer EM: the share the agent answers right end to end;
- step EM: the model's step answers against the plan's own values (the verifier's).
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
from sage_agent.steps import final_answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--db", type=Path, default=Path("bench-plans.db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plans.md"))
    args = parser.parse_args()

    tasks = read_tasks(args.data)
    random.Random(args.seed).shuffle(tasks)
    tasks = [{**t, "id": f"plan-{args.seed}-{i}"} for i, t in enumerate(tasks[: args.problems])]
    for path in (args.db, Path(f"{args.db}-wal"), Path(f"{args.db}-shm")):
        path.unlink(missing_ok=True)
    agent = SageAgent(args.db, substitute="answers")
    agent.configure(decomposer=LLMDecomposer(agent.model))
    started = time.perf_counter()
    summary = agent.run(tasks, train=False, route=False)
    seconds = time.perf_counter() - started

    parsed = planned_right = solved = steps = steps_right = 0
    failures: list[str] = []
    for thread in summary.threads:
        values = agent.state(thread)
        result, records = values["result"], values.get("records") or []
        if result["error"]:
            failures.append(result["error"][:160])
            continue
        parsed += 1
        gold = parse_number(final_answer(values["task"]["answer"]))
        planned_right += numbers_match(parse_number(records[-1]["reference"]), gold)
        solved += bool(result["correct"])
        steps += len(records)
        steps_right += sum(r["first_passed"] for r in records)
    n = len(summary.threads)
    figures = {
        "problems": n,
        "plans parsed": parsed / n,
        "plan accuracy": planned_right / n,
        "final-answer EM": solved / n,
        "steps": steps,
        "step EM": steps_right / steps if steps else 0.0,
        "seconds per problem": seconds / n,
    }
    print(json.dumps(figures))
    lines = results_header(
        "Plans of the embedded model on GSM8K questions",
        f"Seed {args.seed}: {n} problems of the training split given as questions only; "
        "the embedded SmolLM2-135M plans (LLMDecomposer) and answers every step; no "
        "adaptation.",
    )
    lines += ["| figure | value |", "|---|---|"]
    for name, value in figures.items():
        shown = f"{value:.1%}" if isinstance(value, float) and value <= 1 else f"{value:.3g}"
        lines.append(f"| {name} | {shown} |")
    lines += ["", "Plans that did not parse (the decomposer's error, cut):", ""]
    lines += [f"- `{failure}`" for failure in failures] or ["- none"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
