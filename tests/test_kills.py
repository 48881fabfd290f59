"""Real SIGKILLs: a `sage-agent run` killed at chosen points resumes with `--resume` to the
figures of an uninterrupted run, and leaves the database and the adapter folder whole.

Each run is a subprocess (tests/crash_run.py) on the tiny llama, so these take a while:
about 10 s a process, most of it importing torch.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.crash_run import KILL_POINTS
from tests.support.kills import figures, run_point, start_run, state_of
from tests.support.tiny import nine_task

pytestmark = pytest.mark.system  # starts processes or a server


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kills") / "tasks.jsonl"
    path.write_text("".join(json.dumps(nine_task(i)) + "\n" for i in range(16)))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tasks: Path, tiny_model_dir: Path, tmp_path_factory) -> tuple[dict, dict]:
    db = tmp_path_factory.mktemp("whole") / "sage.db"
    return figures(start_run("none", db, tasks, tiny_model_dir)), state_of(db)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_killed_run_resumes_to_the_same_figures(
    point: str, tasks: Path, tiny_model_dir: Path, tmp_path: Path, uninterrupted
) -> None:
    db = tmp_path / "sage.db"
    crashed = start_run(point, db, tasks, tiny_model_dir)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]  # the point was hit
    resumed = run_point("none", "run", "--resume", "--db", str(db), "--json")
    expected, expected_state = uninterrupted
    assert figures(resumed) == expected
    assert state_of(db) == expected_state
    assert expected["adapters_trained"] >= 1 and expected["retry_success"] >= 1


def test_two_resumes_of_one_run_are_not_run_at_once(tasks, tiny_model_dir, tmp_path) -> None:
    db = tmp_path / "sage.db"
    assert start_run("between-graph-steps", db, tasks, tiny_model_dir).returncode < 0
    connection = sqlite3.connect(db, isolation_level=None)
    run_id, owner = connection.execute("SELECT id, owner FROM runs").fetchone()
    host = owner.split(":")[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # as if a live process of this machine were running the run
        connection.execute("UPDATE runs SET owner = ?", [f"{host}:{sleeper.pid}"])
        refused = run_point("none", "run", "--resume", "--db", str(db))
        assert refused.returncode == 1
        assert f"run {run_id} is running in another process" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    resumed = run_point("none", "run", "--resume", "--db", str(db), "--json")
    assert figures(resumed)["problems"] == 16
