"""LangGraph checkpoints in the project's SQLite file: read back with nothing but data,
and pruned once a thread has finished.

LangGraph's default serializer rebuilds a value by importing the ``module.name`` written
in its blob and calling it, so a planted checkpoint could run any function on ``trace``,
``report`` or ``--resume``. Checkpoints here are read strictly: only the types of
LangGraph's own allow-list (messages, dates, paths, ...) are rebuilt, and a blob that
names anything else is refused with ``UnsafeCheckpoint`` before anything is called. The
graph's state is plain data by design (``sage_agent.records``), so nothing it writes is
refused.

LangGraph writes every channel into every checkpoint, so a thread's checkpoints grow with
its state times its steps. A finished thread keeps its last checkpoint (the state
``trace`` and ``report`` read) and a compact history of the others (what ran, what
changed: ``checkpoint_history`` without the states), which the run registry stores.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.event_hooks import SerdeEvent, register_serde_event_listener
from langgraph.checkpoint.serde.jsonplus import InvalidModuleError, JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from sage_agent.database import LOCK_TIMEOUT
from sage_agent.errors import UnsafeCheckpoint

_refused = threading.local()
"""The types a load on this thread was refused, while ``_watching`` collects them."""


def _collect(event: SerdeEvent) -> None:
    blocked = getattr(_refused, "names", None)
    if blocked is not None and str(event.get("kind", "")).endswith("blocked"):
        blocked.append(".".join(str(event.get(k)) for k in ("module", "name") if event.get(k)))


register_serde_event_listener(_collect)


@contextmanager
def _watching() -> Iterator[list[str]]:
    _refused.names = names = []
    try:
        yield names
    finally:
        _refused.names = None


class StrictSerializer(JsonPlusSerializer):
    """JsonPlusSerializer with LangGraph's strict allow-list, raising instead of warning:
    a checkpoint that names a type outside it is refused (``UnsafeCheckpoint``)."""

    def __init__(self) -> None:
        super().__init__(allowed_msgpack_modules=None, allowed_json_modules=None)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        with _watching() as refused:
            try:
                value = super().loads_typed(data)
            except InvalidModuleError as error:
                raise UnsafeCheckpoint(_message(str(error))) from error
        if refused:
            raise UnsafeCheckpoint(_message(", ".join(sorted(set(refused)))))
        return value


def _message(what: str) -> str:
    return (
        f"a checkpoint in this database names {what}, which sage-agent never writes; "
        "it was not loaded (the database may have been tampered with)"
    )


def sqlite_checkpointer(db: str | Path, *, timeout: float = LOCK_TIMEOUT) -> SqliteSaver:
    """A SqliteSaver on the project's SQLite file, with its own connection (waiting for a
    lock as long as the components do) and the strict serializer."""
    connection = sqlite3.connect(str(db), check_same_thread=False, timeout=timeout)
    return SqliteSaver(connection, serde=StrictSerializer())


def checkpoint_history(graph: Any, thread_id: str) -> list[dict[str, Any]]:
    """Every checkpoint the compiled ``graph``'s checkpointer holds for the thread, oldest
    first: its step, id, time, the nodes whose writes it holds (``ran``), the nodes
    due next, the state keys it changed, and the state (``values``)."""
    config = {"configurable": {"thread_id": thread_id}}
    points: list[dict[str, Any]] = []
    before: dict[str, Any] = {}
    ran: list[str] = []
    for past in reversed(list(graph.get_state_history(config))):
        values = past.values or {}
        points.append(
            {
                "step": past.metadata.get("step", -1) if past.metadata else -1,
                "checkpoint_id": past.config["configurable"]["checkpoint_id"],
                "created": past.created_at or "",
                "ran": ran,
                "next": list(past.next),
                "changed": [k for k, v in values.items() if before.get(k) != v],
                "values": values,
            }
        )
        before, ran = values, [n for n in past.next if n != "__start__"]
    return points


def prune_thread(saver: SqliteSaver, thread_id: str) -> int:
    """Delete every checkpoint of a finished thread but its latest, with their pending
    writes; returns how many were deleted."""
    with saver.cursor() as cursor:
        latest = cursor.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' "
            "ORDER BY checkpoint_id DESC LIMIT 1",
            [thread_id],
        ).fetchone()
        if latest is None:
            return 0
        cursor.execute(
            "DELETE FROM writes WHERE thread_id = ? AND checkpoint_id != ?", [thread_id, *latest]
        )
        cursor.execute(
            "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id != ?",
            [thread_id, *latest],
        )
        return cursor.rowcount
