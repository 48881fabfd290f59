"""Writers and readers on one database, each a process of its own (tests/load_run.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).parent.parent / "load_run.py"


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
