"""How well does the embedded model plan GSM8K problems it is given as questions only,
and does planner adaptation help?

    python benchmarks/bench_plans.py --data ../shared/data/gsm8k/train.jsonl
        [--seed 0] [--problems 30] [--adapt 40] [--out benchmarks/results/plans.md]

Problems of the GSM8K training split, shuffled with ``--seed``, run through the SAGE graph
with ``LLMDecomposer`` on the embedded SmolLM2-135M (its few-shot plan prompt), the model
answering every step with earlier answers substituted (``substitute="answers"``: a real
agent). The worked solution is used only to score, and, on the stream, to correct the
plans that failed:

- plans parsed: the share of questions whose plan has at least one computable step;
- plan accuracy: the share whose plan's last step, computed by the verifier, is the gold
  final answer (only the plan is judged);
- final-answer EM: the share the agent answers right end to end;
- step EM: the model's step answers against the plan's own values (the verifier's).

With ``--adapt N`` (default 40), N other problems are streamed first with adaptation on,
with the CLI's defaults (its search budget and its run's adaptation budget, of which the
plan cluster's searches have their share): failed plans go to the buffer and train
planner adapters, failed steps train step adapters. Then the ``--problems`` held-out
problems run with the base model alone and with the adapters routed (nothing trained),
side by side. ``--adapt 0`` measures the base model only.

Each seed's figures are saved to ``results/plans/seed-N.json`` beside ``--out``, and the
report is made from every saved seed with the same settings: run ``--seed 0``, then 1 and
2 (one at a time) for one table with the spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from sage_agent import SageAgent
from sage_agent.app.cli import RUN_OPTIONS
from sage_agent.context import AdaptationBudget
from sage_agent.graphs.store_calls import adaptation_seconds
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.tasks.data import read_tasks
from sage_agent.tasks.decompose import LLMDecomposer
from sage_agent.tasks.plans import PLAN_TAG
from sage_agent.tasks.steps import final_answer


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


FIGURES = ("plans parsed", "plan accuracy", "final-answer EM", "step EM", "seconds per problem")
LIFTED = ("plans parsed", "plan accuracy", "final-answer EM", "step EM")


def run_seed(args: argparse.Namespace) -> dict:
    """One seed: its columns of figures (stream, base model, adapters) and what it trained."""
    tasks = read_tasks(args.data)
    random.Random(args.seed).shuffle(tasks)
    tasks = [{**t, "id": f"plan-{args.seed}-{i}"} for i, t in enumerate(tasks)]
    stream, heldout = tasks[: args.adapt], tasks[args.adapt : args.adapt + args.problems]
    for path in (args.db, Path(f"{args.db}-wal"), Path(f"{args.db}-shm")):
        path.unlink(missing_ok=True)
    agent = SageAgent(args.db, substitute="answers")
    agent.configure(
        decomposer=LLMDecomposer(agent.model),
        budget_seconds=RUN_OPTIONS["budget"],
        adaptation=AdaptationBudget(RUN_OPTIONS["adapt_seconds"]),
    )
    columns: dict[str, dict] = {}
    adapt_s = planner_s = 0.0
    if stream:
        started = time.perf_counter()
        summary = agent.run(stream, train=True, route=True)
        columns["stream, adapting"] = plan_figures(
            agent, summary.threads, time.perf_counter() - started
        )
        adapt_s = summary.adapt_s
        planner_s = sum(adaptation_seconds(agent.state(t), planner=True) for t in summary.threads)
    modes = {"base model": False, "adapters": True} if stream else {"base model": False}
    for name, route in modes.items():
        started = time.perf_counter()
        summary = agent.run(heldout, train=False, route=route)
        columns[name] = plan_figures(agent, summary.threads, time.perf_counter() - started)
    adapters = agent.store.adapters()
    return {
        "seed": args.seed,
        "columns": columns,
        "planner_adapters": sum(a.tag == PLAN_TAG for a in adapters),
        "step_adapters": sum(a.tag != PLAN_TAG for a in adapters),
        "adapt_s": adapt_s,
        "planner_s": planner_s,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def load_seeds(folder: Path, settings: dict) -> list[dict]:
    """The saved seeds run with ``settings``, in seed order."""
    seeds = []
    for path in sorted(folder.glob("seed-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["settings"] == settings:
            seeds.append(data["result"])
    return sorted(seeds, key=lambda r: r["seed"])


def spread(values: list[float], percent: bool = True) -> str:
    """Mean ± standard deviation over seeds (the mean alone for one seed)."""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    mean = f"{np.mean(values) * scale:.1f}{unit}"
    return mean if len(values) < 2 else f"{mean} ± {np.std(values) * scale:.1f}"


def report(seeds: list[dict], settings: dict) -> list[str]:
    names = list(seeds[0]["columns"])
    adapting = "adapters" in names
    setting = (
        f"Seeds {', '.join(str(r['seed']) for r in seeds)}: problems of the training split "
        "given as questions only; the embedded SmolLM2-135M plans (LLMDecomposer) and "
        "answers every step. "
        + (
            f"{settings['adapt']} problems streamed with adaptation (the CLI's defaults), then "
            f"{settings['problems']} held out, with the base model and with the adapters "
            "routed. "
            if adapting
            else f"{settings['problems']} problems, no adaptation. "
        )
        + "Means ± standard deviation over the seeds."
    )
    commands = sorted({r["command"] for r in seeds})
    lines = [
        "# Plans of the embedded model on GSM8K questions",
        "",
        "Commands (one per seed, merged):" if len(commands) > 1 else "Command:",
        "",
        *(f"    {c}" for c in commands),
        "",
        f"Machine: {os.cpu_count()} CPU cores. {setting}",
        "",
    ]
    header = [*names, "lift (adapters - base)"] if adapting else names
    lines += ["| figure | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for figure in FIGURES:
        percent = figure != "seconds per problem"
        cells = [spread([r["columns"][n][figure] for r in seeds], percent) for n in names]
        if adapting:
            lifts = [
                r["columns"]["adapters"][figure] - r["columns"]["base model"][figure] for r in seeds
            ]
            cells.append(spread(lifts) if figure in LIFTED else "")
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    if adapting:
        lines += [
            "",
            "| seed | planner adapters | step adapters | adaptation s (planner) "
            "| plan accuracy, base -> adapters |",
            "|---|---|---|---|---|",
        ]
        for r in seeds:
            base, adapted = r["columns"]["base model"], r["columns"]["adapters"]
            lines.append(
                f"| {r['seed']} | {r['planner_adapters']} | {r['step_adapters']} "
                f"| {r['adapt_s']:.0f} ({r['planner_s']:.0f}) "
                f"| {base['plan accuracy']:.1%} -> {adapted['plan accuracy']:.1%} |"
            )
    for r in seeds:
        for name in names:
            failures = r["columns"][name]["failures"]
            lines += ["", f"Seed {r['seed']}, plans that did not parse, {name} (cut):", ""]
            lines += [f"- `{failure}`" for failure in failures[:5]] or ["- none"]
            if len(failures) > 5:
                lines.append(f"- and {len(failures) - 5} more")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=30, help="held-out problems")
    parser.add_argument(
        "--adapt", type=int, default=40, help="stream this many problems first, adapting"
    )
    parser.add_argument("--db", type=Path, default=Path("bench-plans.db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plans.md"))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file at once
    result = run_seed(args)
    print(json.dumps({"seed": args.seed, **{k: v for k, v in result.items() if k != "columns"}}))
    settings = {"problems": args.problems, "adapt": args.adapt}
    settings |= {k: RUN_OPTIONS[k] for k in ("budget", "adapt_seconds")}
    folder = args.out.parent / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"seed-{args.seed}.json"
    path.write_text(json.dumps({"settings": settings, "result": result}, indent=1) + "\n")
    lines = report(load_seeds(folder, settings), settings)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
