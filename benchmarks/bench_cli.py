"""The CLI's defaults as a new user meets them: ``sage-agent run`` on the first N problems of
a file, then ``sage-agent eval`` on N other problems with and without the adapters it kept.

    python benchmarks/bench_cli.py --data ../shared/data/gsm8k/train.jsonl
        [--run 100] [--eval 100] [--seed 0] [--out benchmarks/results/cli.md]

Runs the real commands (the embedded model, one database in a temporary folder, no flag
but ``--data``, ``--limit``, ``--db`` and ``--json``). The eval problems are ``--eval`` lines
drawn with ``--seed`` from the lines after the first ``--run``, so none was seen in the run.
Writes each command's wall time and summary, and, step by step, what the adapters changed
on the eval problems: right steps kept (the NER of "every right base step kept"), wrong
steps fixed, right steps lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import results_header, write_results

from sage_agent import SageAgent
from sage_agent.report.run import read_run

RESULTS = Path(__file__).resolve().parent / "results"
CLI = [sys.executable, "-m", "sage_agent.app.cli"]


def sage_agent(*args: str) -> tuple[dict, float]:
    """One CLI command with ``--json``: its summary and wall seconds. Its progress bars go
    to this process's stderr."""
    started = time.perf_counter()
    done = subprocess.run(
        [*CLI, *args, "--json"], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sage-agent {' '.join(args)} failed ({done.returncode})")
    return json.loads(done.stdout), seconds


def step_outcomes(db: Path, run_id: str) -> dict[tuple[str, int], bool]:
    """Whether each step of a run was answered right, by (task id, step number)."""
    agent = SageAgent(db)
    report = read_run(agent, run_id)
    task_of = {row.thread: row.task for row in report.threads}
    return {(task_of[s.thread], s.step): s.passed for s in report.stream}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", type=int, default=100)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "cli.md")
    args = parser.parse_args()
    lines = [line for line in args.data.read_text().splitlines() if line.strip()]
    held_out = random.Random(args.seed).sample(lines[args.run :], args.eval)

    with tempfile.TemporaryDirectory() as folder:
        db, eval_file = Path(folder) / "sage.db", Path(folder) / "eval.jsonl"
        eval_file.write_text("\n".join(held_out) + "\n")
        run, run_s = sage_agent(
            "run", "--data", str(args.data), "--limit", str(args.run), "--db", str(db)
        )
        base, base_s = sage_agent(
            "eval", "--data", str(eval_file), "--db", str(db), "--no-adapters"
        )
        adapted, adapted_s = sage_agent("eval", "--data", str(eval_file), "--db", str(db))
        before = step_outcomes(db, base["run_id"])
        after = step_outcomes(db, adapted["run_id"])

    common = sorted(set(before) & set(after))
    right = [k for k in common if before[k]]
    kept = sum(after[k] for k in right)
    fixed = sum(after[k] and not before[k] for k in common)
    lines_out = results_header(
        "The CLI's defaults",
        f"`sage-agent run --data {args.data.name} --limit {args.run}`, then `sage-agent eval` "
        f"on {args.eval} other problems of the file (drawn with seed {args.seed} from the lines "
        "after the run's), with `--no-adapters` and with the adapters the run kept. The "
        "embedded SmolLM2-135M; every other option at its default.",
    )
    lines_out += [
        "| command | wall s | problems | steps | step EM | problem EM | clusters | adapters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary, seconds in (
        ("run", run, run_s),
        ("eval --no-adapters", base, base_s),
        ("eval", adapted, adapted_s),
    ):
        lines_out.append(
            f"| {name} | {seconds:.0f} | {summary['problems']} | {summary['steps']} | "
            f"{summary['step_em']:.3f} | {summary['problem_em']:.3f} | "
            f"{summary['clusters']} | {summary['adapters_trained']} |"
        )
    gain = 100 * (adapted["step_em"] - base["step_em"])
    lines_out += [
        "",
        f"The run: {run['triggers']} first answers failed the Trigger, {run['retries']} "
        f"retries with an adapter fixed {run['retry_success']}, {run['adapt_s']:.0f} s in the "
        "LoRA Store.",
        "",
        f"Eval with the adapters against `--no-adapters`: step EM {gain:+.1f} points. Step by "
        f"step ({len(common)} steps in both): {len(right)} right without adapters, {kept} of "
        f"them still right with them (kept {kept / max(1, len(right)):.1%}, "
        f"{len(right) - kept} lost); {fixed} wrong steps fixed; "
        f"{sum(after[k] for k in common)} right with the adapters.",
        "",
    ]
    write_results(args.out, lines_out)


if __name__ == "__main__":
    main()
