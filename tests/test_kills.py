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

from sage_agent.store import AdapterRegistry, adapter_root
from tests.crash_run import KILL_POINTS
from tests.test_graph import nine_task

RUNNER = Path(__file__).parent / "crash_run.py"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kills") / "tasks.jsonl"
    path.write_text("".join(json.dumps(nine_task(i)) + "\n" for i in range(16)))
    return path


def _run(point: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), point, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _start(point: str, db: Path, tasks: Path, model: Path) -> subprocess.CompletedProcess[str]:
    argv = ["run", "--data", str(tasks), "--db", str(db), "--model", str(model)]
    return _run(point, *argv, "--buffer-size", "10", "--json")


def _figures(process: subprocess.CompletedProcess[str]) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    timings = ("wall_s", "adapt_s")  # seconds differ between runs; what they did does not
    return {k: v for k, v in summary.items() if k not in ("run_id", "threads", *timings)}


def _state(db: Path) -> dict:
    """What must hold after any crash and resume; returns counts to compare."""
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = connection.execute("SELECT key, COUNT(*) FROM samples GROUP BY key").fetchall()
    assert all(key is not None and n == 1 for key, n in keys), keys  # no sample twice
    registry = AdapterRegistry(db, adapter_root(db))
    adapters = registry.adapters(status=None)
    assert all(a.status == "ready" and registry.intact(a) for a in adapters)
    on_disk = {p.name for p in registry.root.iterdir()} if registry.root.exists() else set()
    assert on_disk == {a.id for a in adapters}  # no temporary or unregistered folder
    return {"samples": len(keys), "adapters": len(adapters)}


@pytest.fixture(scope="module")
def uninterrupted(tasks: Path, tiny_model_dir: Path, tmp_path_factory) -> tuple[dict, dict]:
    db = tmp_path_factory.mktemp("whole") / "sage.db"
    return _figures(_start("none", db, tasks, tiny_model_dir)), _state(db)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_killed_run_resumes_to_the_same_figures(
    point: str, tasks: Path, tiny_model_dir: Path, tmp_path: Path, uninterrupted
) -> None:
    db = tmp_path / "sage.db"
    crashed = _start(point, db, tasks, tiny_model_dir)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]  # the point was hit
    resumed = _run("none", "run", "--resume", "--db", str(db), "--json")
    figures, state = uninterrupted
    assert _figures(resumed) == figures
    assert _state(db) == state
    assert figures["adapters_trained"] >= 1 and figures["retry_success"] >= 1


def test_two_resumes_of_one_run_are_not_run_at_once(tasks, tiny_model_dir, tmp_path) -> None:
    db = tmp_path / "sage.db"
    assert _start("between-graph-steps", db, tasks, tiny_model_dir).returncode < 0
    connection = sqlite3.connect(db, isolation_level=None)
    run_id, owner = connection.execute("SELECT id, owner FROM runs").fetchone()
    host = owner.rpartition(":")[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # as if a live process of this machine were running the run
        connection.execute("UPDATE runs SET owner = ?", [f"{host}:{sleeper.pid}"])
        refused = _run("none", "run", "--resume", "--db", str(db))
        assert refused.returncode == 1
        assert f"run {run_id} is running in another process" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _figures(_run("none", "run", "--resume", "--db", str(db), "--json"))["problems"] == 16
