"""Runs and their threads in the project's database: ``RunRegistry``.

A run is a row of ``runs`` (its mode, the options it started with, its lease with a
heartbeat and, once finished, its summary); each of its tasks is a row of ``threads``, in
the run's order. The graph's checkpoints hold what the threads did; these tables say
which threads make a run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from sage_agent.database import LOCK_TIMEOUT, holds, open_database, transaction
from sage_agent.errors import NotFoundError, RunError

LEASE_SECONDS = 300.0
"""How long a run's lease lasts without a heartbeat (for a process on another machine;
one on this machine holds it while it lives)."""
LEASE_BEAT = 30.0
"""Seconds between the heartbeats of a running run."""

RUNS = {
    "id": str,
    "mode": str,
    "options": str,
    "started": float,
    "finished": float,
    "summary": str,
    "owner": str,
    "heartbeat": float,
}
THREADS = {
    "id": str,
    "run_id": str,
    "task_id": str,
    "position": int,
    "started": float,
    "finished": float,
    "history": str,
}


class RunRegistry:
    """The ``runs`` and ``threads`` tables of the SQLite file ``db``."""

    def __init__(self, db: str | Path, *, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = Path(db)
        self.db = open_database(self.path, timeout=timeout)
        with transaction(self.db):
            self.db["runs"].create(RUNS, pk="id", if_not_exists=True)
            self.db["threads"].create(THREADS, pk="id", if_not_exists=True)

    def start(self, run_id: str, mode: str, options: dict[str, Any], owner: str) -> None:
        """A new run, leased to ``owner``."""
        with transaction(self.db):
            self.db["runs"].insert(
                {
                    "id": run_id,
                    "mode": mode,
                    "options": json.dumps(options),
                    "started": time.time(),
                    "finished": None,
                    "summary": None,
                    "owner": owner,
                    "heartbeat": time.time(),
                }
            )

    def lease(self, run_id: str, owner: str, *, take_over: bool = False) -> None:
        """Take an unfinished run over: refused while the process that runs it is alive
        (on another machine: while its heartbeat is fresh), unless ``take_over``."""
        with transaction(self.db):
            run = self.get(run_id)
            if run["finished"] is not None:
                raise RunError(f"run {run_id} has finished; there is nothing to resume")
            holder = run.get("owner")
            if not take_over and holder != owner and lease_held(run):
                raise RunError(
                    f"run {run_id} is running in another process ({holder}); it cannot be "
                    "resumed twice at once (--take-over takes it, if that process is gone)"
                )
            self.db["runs"].update(run_id, {"owner": owner, "heartbeat": time.time()})

    def beat(self, run_id: str, owner: str) -> None:
        """The lease's heartbeat: the run is still being run by ``owner``."""
        with transaction(self.db):
            self.db.execute(
                "UPDATE runs SET heartbeat = ? WHERE id = ? AND owner = ?",
                [time.time(), run_id, owner],
            )

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Record the run's summary and free its lease."""
        with transaction(self.db):
            self.db["runs"].update(
                run_id, {"finished": time.time(), "summary": json.dumps(summary), "owner": None}
            )

    def get(self, run_id: str) -> dict[str, Any]:
        run = next(self.db["runs"].rows_where("id = ?", [run_id]), None)
        if run is None:
            raise NotFoundError(f"no run {run_id!r} in {self.path}")
        return run

    def start_thread(self, thread_id: str, run_id: str, task_id: str, position: int) -> None:
        """The thread of a run's task (kept as it was when a resumed run meets it again)."""
        with transaction(self.db):
            self.db["threads"].insert(
                {
                    "id": thread_id,
                    "run_id": run_id,
                    "task_id": task_id,
                    "position": position,
                    "started": time.time(),
                    "finished": None,
                },
                ignore=True,
            )

    def finish_thread(self, thread_id: str, history: list[dict[str, Any]] | None = None) -> None:
        """Mark a thread finished, with the compact history of its checkpoints (what ran
        and changed at each) when they are about to be pruned: a history already kept
        stays (a resumed run meets its pruned threads again)."""
        with transaction(self.db):
            self.db.execute(
                "UPDATE threads SET finished = ?, history = COALESCE(history, ?) WHERE id = ?",
                [time.time(), None if history is None else json.dumps(history), thread_id],
            )

    def kept_history(self, thread_id: str) -> bool:
        """Whether the thread's checkpoints were already pruned to its history."""
        row = self.db.execute("SELECT history FROM threads WHERE id = ?", [thread_id]).fetchone()
        return bool(row and row[0])

    def threads(self, run_id: str | None = None, *, order_by: str = "started") -> list[dict]:
        """The threads of a run (every run's with None), in ``order_by`` order."""
        where, args = ("run_id = ?", [run_id]) if run_id else (None, [])
        return list(self.db["threads"].rows_where(where, args, order_by=order_by))

    def unfinished(self) -> dict[str, Any] | None:
        """The latest run that did not finish (for --resume), or None."""
        return unfinished_run(self.db)


def lease_held(run: dict[str, Any]) -> bool:
    """Whether a run's lease still stands: its owner lives (on this machine) or its
    heartbeat is fresh (on another)."""
    beat = run.get("heartbeat")
    until = None if beat is None else beat + LEASE_SECONDS
    return holds(run.get("owner"), until, now=time.time())


def unfinished_run(db: sqlite_utils.Database) -> dict[str, Any] | None:
    """The latest run of the project's database ``db`` that did not finish, or None (also
    for a database no run has written to)."""
    if "runs" not in db.table_names():
        return None
    return next(db["runs"].rows_where("finished IS NULL", order_by="started DESC", limit=1), None)
