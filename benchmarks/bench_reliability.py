"""Reliability in figures: kills survived, writes under concurrent load, bad inputs refused.

    python benchmarks/bench_reliability.py [--seconds 120] [--out benchmarks/results/reliability.md]

On the tiny llama the tests build (bag-of-words embeddings, the store settings it learns
under), so that the figures measure the machinery, not the model:

* kills: a `sage-agent run` of 16 one-step problems is SIGKILLed at each point of
  tests/crash_run.py, resumed with `--resume`, and compared with an uninterrupted run (the
  same figures, an intact database, no sample twice, no orphan folder);
* load: two processes run `sage-agent run` over and over on one database while four read
  it (`trace`, `adapters list`, `clusters list`) for ``--seconds``; every write must be
  there afterwards (runs, threads, one sample per failed first answer, one search per
  cluster version) and no process may see an error;
* bad input: the command-line catalogue of tests/test_bad_input.py, each case counted
  as refused cleanly when it exits 1 with one line, no traceback, within a second, and
  leaves the database as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from common import results_header

from tests.crash_run import KILL_POINTS
from tests.support.bad_input import CLI_CASES, bad_lines, stored
from tests.support.kills import figures, run_point, start_run, state_of
from tests.support.load import run_load
from tests.support.tiny import (
    NINES,
    SMALL_BUFFER,
    BagOfWordsEmbeddings,
    build_tiny_llama,
    nine_task,
)

RESULTS = Path(__file__).parent / "results"


def kills(folder: Path, tasks: Path, model: Path) -> list[tuple[str, bool, str]]:
    whole = folder / "whole.db"
    expected = (figures(start_run("none", whole, tasks, model)), state_of(whole))
    outcomes = []
    for point in sorted(KILL_POINTS):
        db = folder / f"{point}.db"
        crashed = start_run(point, db, tasks, model)
        resumed = run_point("none", "run", "--resume", "--db", str(db), "--json")
        try:
            assert crashed.returncode < 0, "the kill point was not reached"
            same = (figures(resumed), state_of(db)) == expected
            outcomes.append((point, same, "same figures" if same else "figures differ"))
        except AssertionError as error:
            outcomes.append((point, False, str(error)[:120]))
        print(f"kill {point}: {outcomes[-1][2]}")
    return outcomes


def load(folder: Path, tasks: Path, model: Path, seconds: float) -> dict:
    db = folder / "load.db"
    writers, readers = run_load(db, tasks, model, seconds)
    runs = [run for w in writers for run in w["runs"]]
    connection = sqlite3.connect(db)
    stored_runs = connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    threads = connection.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
    samples = connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    searches = connection.execute(
        "SELECT COUNT(*) FROM (SELECT cluster_id, cluster_version, number, COUNT(*) AS n "
        "FROM trials GROUP BY 1, 2, 3 HAVING n > 1)"
    ).fetchone()[0]
    lost = (
        abs(stored_runs - len(runs))
        + abs(threads - 16 * len(runs))
        + abs(samples - sum(r["triggers"] for r in runs))
    )
    return {
        "runs": len(runs),
        "reads": sum(r["operations"] for r in readers),
        "errors": sum(len(p["failures"]) for p in writers + readers),
        "lost": lost,
        "twice-searched": searches,
    }


def bad_inputs(folder: Path, tasks: Path, model: Path) -> list[tuple[str, bool]]:
    from sage_agent import ChatSage, SageAgent
    from sage_agent.app.cli import main

    db = folder / "bad.db"
    agent = SageAgent(
        db,
        ChatSage(model=str(model), max_tokens=4),
        embeddings=BagOfWordsEmbeddings(),
        buffer_config=SMALL_BUFFER,
        store_config=NINES,
    )
    agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0)
    bad = bad_lines(folder)
    outcomes = []
    for argv, words in CLI_CASES:
        argv = [a.format(bad=bad, data=tasks, folder=folder) for a in argv]
        before, err = stored(db), io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, "--db", str(db)])
        text = err.getvalue()
        clean = (
            code == 1
            and words in text
            and "Traceback" not in text
            and len(text.strip().splitlines()) == 1
            and time.perf_counter() - started < 1.0
            and stored(db) == before
        )
        # the whole command, with the temporary folder left out of its paths
        shown = " ".join(a.replace(f"{folder}{os.sep}", "") for a in argv)
        outcomes.append((shown, clean))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the load")
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability.md")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        model = build_tiny_llama(folder / "tiny")
        tasks = folder / "tasks.jsonl"
        tasks.write_text("".join(json.dumps(nine_task(i)) + "\n" for i in range(16)))
        killed = kills(folder, tasks, model)
        loaded = load(folder, tasks, model, args.seconds)
        print(f"load: {loaded}")
        refused = bad_inputs(folder, tasks, model)
    survived = sum(ok for _, ok, _ in killed)
    clean = sum(ok for _, ok in refused)
    lines = results_header(
        "Reliability",
        "The tiny llama of the tests, bag-of-words embeddings; "
        f"{time.perf_counter() - started:.0f} s in all.",
    )
    lines += [
        f"- **Kills survived: {survived} / {len(killed)}** (resumed to the uninterrupted "
        "run's figures, database intact, no sample twice, no orphan folder)",
        f"- **Under load: {loaded['runs']} runs written and {loaded['reads']} reads in "
        f"{args.seconds:.0f} s by 2 writer and 4 reader processes; {loaded['lost']} writes "
        f"lost, {loaded['errors']} errors, {loaded['twice-searched']} cluster versions "
        "searched twice**",
        f"- **Bad inputs refused cleanly: {clean} / {len(refused)}** (command line: exit 1, "
        "one line, no traceback, under a second, nothing stored changed)",
        "",
        "| kill point | outcome |",
        "|---|---|",
        *[f"| {point} | {text} |" for point, _, text in killed],
        "",
        "| bad input | refused cleanly |",
        "|---|---|",
        *[f"| `{case}` | {'yes' if ok else 'NO'} |" for case, ok in refused],
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:9]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
