"""Runs of the CLI killed at a point (tests/crash_run.py) and what must hold after them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from sage_agent.store import AdapterRegistry, adapter_root

RUNNER = Path(__file__).parent.parent / "crash_run.py"


def run_point(point: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), point, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_run(point: str, db: Path, tasks: Path, model: Path) -> subprocess.CompletedProcess[str]:
    argv = ["run", "--data", str(tasks), "--db", str(db), "--model", str(model)]
    return run_point(point, *argv, "--buffer-size", "10", "--json")


def figures(process: subprocess.CompletedProcess[str]) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    timings = ("wall_s", "adapt_s")  # seconds differ between runs; what they did does not
    return {k: v for k, v in summary.items() if k not in ("run_id", "threads", *timings)}


def state_of(db: Path) -> dict:
    """What must hold after any crash and resume; returns counts to compare."""
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = connection.execute("SELECT key, COUNT(*) FROM samples GROUP BY key").fetchall()
    assert all(key is not None and n == 1 for key, n in keys), keys  # no sample twice
    registry = AdapterRegistry(db, adapter_root(db))
    adapters = registry.adapters(status=None)
    assert all(a.status == "ready" and registry.intact(a) for a in adapters)
    on_disk = {p.name for p in registry.root.glob("[!.]*")} if registry.root.exists() else set()
    assert on_disk == {a.id for a in adapters}  # no temporary or unregistered folder
    return {"samples": len(keys), "adapters": len(adapters)}
