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
* threads: 16 threads of one process share one SageContext for ``--seconds``, mixing
  middleware turns (``batch`` and ``abatch``) and graph runs; every failure must be in the
  buffer exactly once, no cluster version trained twice, no thread may see an error;
* planted checkpoints: a checkpoint rewritten to call ``os.system`` when loaded is read by
  ``trace``, ``report`` and a resume; each must refuse it in one line, and nothing run;
* escapes: Studio contexts naming a database outside the server's root (absolute, ``..``,
  through a symlink, with a NUL) must be refused before anything is created;
* bytes per task: the checkpoints of finished threads, before and after pruning;
* bad input: the command-line catalogue of tests/support/bad_input.py, each case counted
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
from tests.support.checkpoints import plant
from tests.support.kills import figures, run_point, start_run, state_of
from tests.support.load import run_load
from tests.support.threads import ThreadsReport, run_threads
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


def threads(folder: Path, model: Path, seconds: float) -> ThreadsReport:
    from sage_agent import ChatSage, build_context

    db = folder / "threads.db"
    chat = ChatSage(model=str(model), max_tokens=4)
    context = build_context(
        db, chat, embeddings=BagOfWordsEmbeddings(), buffer_config=SMALL_BUFFER, store_config=NINES
    )
    return run_threads(context, db, threads=16, seconds=seconds)


def _agent(db: Path, model: Path):  # type: ignore[no-untyped-def]
    from sage_agent import ChatSage, SageAgent

    return SageAgent(
        db,
        ChatSage(model=str(model), max_tokens=4),
        embeddings=BagOfWordsEmbeddings(),
        buffer_config=SMALL_BUFFER,
        store_config=NINES,
    )


def planted(folder: Path, model: Path) -> list[tuple[str, bool]]:
    """trace, report and a resume on a planted checkpoint: refused, and nothing run."""
    from sage_agent.app.cli import main
    from sage_agent.errors import UnsafeCheckpoint

    outcomes = []
    for way in ("trace", "report", "resume"):
        db, marker = folder / f"planted-{way}.db", folder / f"ran-{way}"
        agent = _agent(db, model)
        summary = agent.run([nine_task(1)], train=False)
        plant(db, marker)
        err = io.StringIO()
        if way == "resume":
            with sqlite3.connect(db) as connection:
                connection.execute("UPDATE runs SET finished = NULL, owner = NULL")
            try:
                agent.run([nine_task(1)], run_id=summary.run_id, train=False)
                refused = False
            except UnsafeCheckpoint:
                refused = True
        else:
            argv = {
                "trace": ["trace", summary.threads[0]],
                "report": ["report", "--out", str(folder / "planted.html")],
            }[way]
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main([*argv, "--db", str(db)])
            lines = err.getvalue().strip().splitlines()
            refused = code == 1 and len(lines) == 1 and "os.system" in lines[0]
        outcomes.append((way, refused and not marker.exists()))
    return outcomes


def escapes(folder: Path) -> list[tuple[str, bool]]:
    """Studio contexts naming a database outside the server's root."""
    from pydantic import ValidationError

    from sage_agent.errors import ContextError
    from sage_agent.graphs.studio import StudioContext

    root, outside = folder / "root", folder / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    os.environ["SAGE_STUDIO_ROOT"] = str(root)
    outcomes = []
    for db in (str(outside / "abs.db"), "../up.db", "a/../../up.db", "link/in.db", "x\x00.db"):
        try:
            StudioContext(db=db).resolve()
            refused = False
        except (ValidationError, ContextError):
            refused = True
        outcomes.append((db.replace(str(folder), "").replace("\x00", "\\0"), refused))
    untouched = list(outside.iterdir()) == [] and not (folder / "up.db").exists()
    return [(db, refused and untouched) for db, refused in outcomes]


def bytes_per_task(folder: Path, model: Path, tasks: int = 12) -> tuple[float, float]:
    """Checkpoint bytes per finished task (checkpoints and their writes), kept whole and
    as sage-agent keeps them (pruned to the last, with the history)."""
    import sage_agent.agent as agent_module

    db = folder / "growth.db"
    prune = agent_module.prune_thread
    agent_module.prune_thread = lambda _saver, _thread: 0  # keep every checkpoint
    try:
        summary = _agent(db, model).run([nine_task(i) for i in range(tasks)], train=False)
    finally:
        agent_module.prune_thread = prune
    connection = sqlite3.connect(db)

    def stored() -> int:
        checkpoints = connection.execute(
            "SELECT SUM(LENGTH(checkpoint) + LENGTH(metadata)) FROM checkpoints"
        ).fetchone()[0]
        writes = connection.execute("SELECT SUM(LENGTH(value)) FROM writes").fetchone()[0]
        history = connection.execute("SELECT SUM(LENGTH(history)) FROM threads").fetchone()[0]
        return (checkpoints or 0) + (writes or 0) + (history or 0)

    before = stored()
    saver = _agent(db, model).checkpointer
    for thread in summary.threads:
        prune(saver, thread)
    after = stored()
    connection.close()
    return before / tasks, after / tasks


def bad_inputs(folder: Path, tasks: Path, model: Path) -> list[tuple[str, bool]]:
    from sage_agent.app.cli import main

    db = folder / "bad.db"
    agent = _agent(db, model)
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
        threaded = threads(folder, model, args.seconds)
        print(f"threads: {threaded}")
        refused_checkpoints = planted(folder, model)
        refused_escapes = escapes(folder)
        before, after = bytes_per_task(folder, model)
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
        f"- **Threads: 16 threads of one process on one SageContext for {args.seconds:.0f} s: "
        f"{threaded.turns} middleware turns ({threaded.turns / args.seconds:.1f} a second) "
        f"and {threaded.graph_runs} graph runs; {len(threaded.errors)} errors, "
        f"{threaded.lost} failures lost or buffered twice (of {threaded.failures}), "
        f"{threaded.searches_twice} cluster versions trained twice**",
        f"- **Planted checkpoints refused: {sum(ok for _, ok in refused_checkpoints)} / "
        f"{len(refused_checkpoints)}** (trace, report, resume: refused in one line, the "
        "planted call never ran)",
        f"- **Studio escapes refused: {sum(ok for _, ok in refused_escapes)} / "
        f"{len(refused_escapes)}** (a database outside the server's root; nothing created)",
        f"- **Checkpoint bytes per finished task: {before:,.0f} kept whole, {after:,.0f} as "
        "kept** (the last checkpoint and the history of the others)",
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
    print("\n".join(line for line in lines if line.startswith("- **")))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
