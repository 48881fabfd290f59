"""Two `sage-agent run` processes write one database while four processes read it
(`trace`, `adapters list`, `clusters list`): no lock error, no lost write, no id reused,
and every cluster version searched by one process only."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tests.support.kills import state_of
from tests.support.load import run_load
from tests.support.tiny import nine_task

pytestmark = pytest.mark.system  # starts processes or a server

SECONDS = 15  # per process, after its start-up; bench_reliability runs two minutes


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
    state_of(db)  # integrity, files and rows agree
