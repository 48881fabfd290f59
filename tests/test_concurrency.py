"""Two `sage-agent run` processes write one database while four processes read it
(`trace`, `adapters list`, `clusters list`): no lock error, no lost write, no id reused,
and every cluster version searched by one process only."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.test_graph import nine_task
from tests.test_kills import _state

LOAD = Path(__file__).parent / "load_run.py"
SECONDS = 15  # per process, after its start-up; bench_reliability runs two minutes


def run_load(db: Path, data: Path, model: Path, seconds: float) -> tuple[list, list]:
    """Start 2 writers and 4 readers on ``db``; return their JSON reports."""
    writers = [
        subprocess.Popen(
            [sys.executable, str(LOAD), "writer", str(db), str(data), str(model), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    readers = [
        subprocess.Popen(
            [sys.executable, str(LOAD), "reader", str(db), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(4)
    ]
    reports = [json.loads(p.communicate(timeout=seconds + 600)[0]) for p in writers + readers]
    return reports[:2], reports[2:]


def test_two_writers_and_four_readers(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(nine_task(i)) + "\n" for i in range(16)))
    db = tmp_path / "sage.db"
    writers, readers = run_load(db, data, tiny_model_dir, SECONDS)

    assert [w["failures"] for w in writers] == [[], []]
    assert [r["failures"] for r in readers] == [[]] * 4
    runs = [run for w in writers for run in w["runs"]]
    assert all(run["problems"] == 16 for run in runs) and all(r["operations"] for r in readers)

    connection = sqlite3.connect(db)
    run_ids = [row[0] for row in connection.execute("SELECT id FROM runs")]
    assert sorted(run_ids) == sorted(run["run_id"] for run in runs)  # none lost, none reused
    threads = connection.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
    assert threads == 16 * len(runs)
    samples = connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert samples == sum(run["triggers"] for run in runs)  # every failure buffered once
    searches = Counter(
        connection.execute("SELECT cluster_id, cluster_version, number FROM trials").fetchall()
    )
    assert all(n == 1 for n in searches.values())  # one search per cluster version
    _state(db)  # integrity, files and rows agree
