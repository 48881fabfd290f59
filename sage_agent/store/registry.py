"""The adapter registry: adapter folders under one root, their rows in SQLite, the trial log.

An adapter is written to ``root/.tmp-<id>-<pid>/``, fsynced and checksummed; then, inside
one write transaction, its row is inserted and the folder renamed to ``root/<id>/``. A
registered row therefore always points at complete files, and a process killed anywhere
leaves at most a temporary folder or an unregistered one, which ``sweep`` removes (under
the write lock, so it never sees another process halfway). Rows store the folder relative
to the root, so a store opened from any working directory finds them. Reading the
registry needs no model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sage_agent.database import (
    database_id,
    open_database,
    process_alive,
    transaction,
)
from sage_agent.errors import ConfigError, NotFoundError, StoreError
from sage_agent.store.config import RegistryConfig

log = logging.getLogger(__name__)


ROOT_MARKER = ".sage-database"
"""The file in an adapter root that names the database whose adapters it holds."""


@dataclass(frozen=True)
class TrainedAdapter:
    """What the search knows of an adapter it keeps."""

    cluster_id: int
    cluster_version: int | None
    """The cluster's version its search trained on (None in a file older than the note)."""
    tag: str
    position: int
    """Its place among its cluster's adapters: 1 is the best."""
    config: dict[str, Any]
    """The LoRATrainConfig it was trained with."""
    val_em: float
    """Validation exact match: generated, or the teacher-forced lower bound when that
    already beat the base model (``SearchConfig.confirm_all``)."""
    val_loss: float
    base_val_em: float
    """The base model's, generated."""
    canary_em: float | None
    train_seconds: float
    samples: int
    route_all: bool
    """It answers every step routed to it, sure base answers too: its gate found the
    tag's expected exact match higher that way (``judging.routes_all``)."""


@dataclass(frozen=True)
class NewAdapter(TrainedAdapter):
    """A kept adapter before it is registered, with the centroid routing will use."""

    centroid: np.ndarray


@dataclass(frozen=True)
class AdapterRecord(TrainedAdapter):
    """A registered adapter (a row of the ``adapters`` table)."""

    id: str
    path: str
    """Its folder (absolute), in peft's format."""
    checksum: str
    status: str
    """"ready", or "broken" once its files stopped matching the checksum."""
    created: float
    last_used: float | None
    uses: int
    wins: int


@dataclass(frozen=True, kw_only=True)
class TrialLog:
    """One trial of a search as it is logged, kept or not."""

    cluster_id: int
    cluster_version: int
    number: int
    config: dict[str, Any]
    val_em: float
    val_loss: float | None
    canary_em: float | None
    seconds: float
    outcome: str
    """"kept", or why it was not."""
    adapter_id: str | None
    curve: list[float] = field(default_factory=list)
    """Training loss per optimiser step."""
    rung: int | None = None
    """The successive-halving rung it reached (0: the first)."""
    generated_em: float | None = None
    """Validation exact match of generated answers (None: not confirmed by generation;
    ``val_em`` is teacher-forced)."""
    agreement: float | None = None
    """Share of validation pairs where the teacher-forced and generated verdicts agree."""


@dataclass(frozen=True, kw_only=True)
class TrialRecord(TrialLog):
    """A logged trial (a row of the ``trials`` table)."""

    id: int
    created: float


class AdapterRegistry:
    """Adapters under ``root`` registered in the SQLite file ``db``."""

    def __init__(
        self, db: str | Path, root: str | Path, config: RegistryConfig | None = None
    ) -> None:
        self.config = config or RegistryConfig()
        self.db = open_database(db, timeout=self.config.lock_timeout)
        self.root = Path(root).absolute()
        self._ensure_tables()

    def writable(self) -> None:
        """Create the root, check a file can be written there (StoreError if not) and that
        it is this database's (ConfigError if another database's adapters live there)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StoreError(f"adapter folder {self.root} is not writable: {error}") from error
        self._mark_root()

    def _mark_root(self) -> None:
        """Mark the root with the database's identity, or refuse a root marked by another
        database: opening a store sweeps the root, which would delete the other
        database's adapters while its rows stay ready."""
        mine, marker = database_id(self.db), self.root / ROOT_MARKER
        try:
            found = marker.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            marker.write_text(mine + "\n", encoding="utf-8")
            return
        if found != mine:
            raise ConfigError(
                f"adapter folder {self.root} belongs to another database (its "
                f"{ROOT_MARKER} says {found}); give this database a folder of its own "
                "(adapters=...)"
            )

    # writing

    def register(self, adapter: NewAdapter, write: Callable[[Path], None]) -> AdapterRecord:
        """Write an adapter with ``write(folder)``, then register it (see the module
        docstring for the order that makes this crash-safe)."""
        self.writable()
        adapter_id = uuid.uuid4().hex[:12]
        temporary = self.root / f".tmp-{adapter_id}-{os.getpid()}"
        final = self.root / adapter_id
        try:
            write(temporary)
            for path in temporary.iterdir():
                _fsync(path)
            fields = {k: v for k, v in asdict(adapter).items() if k != "centroid"}
            row = {
                **fields,
                "id": adapter_id,
                "config": json.dumps(adapter.config),
                "centroid": np.asarray(adapter.centroid, dtype=np.float32).tobytes(),
                "path": adapter_id,
                "checksum": folder_checksum(temporary),
                "status": "ready",
                "created": time.time(),
                "last_used": None,
                "uses": 0,
                "wins": 0,
            }
            with transaction(self.db):
                self.db["adapters"].insert(row)
                os.replace(temporary, final)
                _fsync(self.root)
        except BaseException:
            # Nothing was registered (the transaction rolled back): no files stay either.
            shutil.rmtree(temporary, ignore_errors=True)
            with contextlib.suppress(Exception):  # unknown: sweep decides on the next open
                if not self._registered(adapter_id):
                    shutil.rmtree(final, ignore_errors=True)
            raise
        return self._record(row)

    def sweep(self) -> list[str]:
        """Remove what killed processes left in the root: temporary folders of processes
        that are gone, and adapter folders no row names. Returns the names removed."""
        if not self.root.is_dir():
            return []
        removed = []
        with transaction(self.db):  # the write lock: no other process is mid-register
            registered = {path for (path,) in self.db.execute("SELECT path FROM adapters")}
            for entry in self.root.iterdir():
                if entry.name.startswith(".tmp-"):
                    owner = entry.name.rsplit("-", 1)[-1]
                    if owner.isdigit() and process_alive(int(owner)):
                        continue
                elif not _ADAPTER_FOLDER.fullmatch(entry.name) or entry.name in registered:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            log.warning("removed %d unfinished adapter folders from %s", len(removed), self.root)
        return removed

    def _registered(self, adapter_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM adapters WHERE id = ?", [adapter_id]).fetchone()
        return row is not None

    def log_trial(self, trial: TrialLog) -> None:
        """One row of the trial log."""
        row = asdict(trial)
        row.update(config=json.dumps(trial.config), curve=json.dumps(list(trial.curve)))
        with transaction(self.db):
            self.db["trials"].insert({**row, "created": time.time()})

    def record_use(self, adapter_id: str, *, won: bool) -> None:
        """Count a use of an adapter, and a win when its answer passed the Trigger."""
        with transaction(self.db):
            row = self.get(adapter_id)
            self.db["adapters"].update(
                adapter_id,
                {"uses": row.uses + 1, "wins": row.wins + int(won), "last_used": time.time()},
            )

    def mark_broken(self, adapter_id: str) -> None:
        with transaction(self.db):
            self.db["adapters"].update(adapter_id, {"status": "broken"})

    def remove(self, adapter_id: str) -> None:
        """Delete an adapter: its row, then its folder (a folder without a row is harmless;
        a row without its folder would be marked broken on its next load)."""
        record = self.get(adapter_id)
        with transaction(self.db):
            self.db["adapters"].delete(adapter_id)
        folder = Path(record.path)
        if folder.parent == self.root:
            shutil.rmtree(folder, ignore_errors=True)

    def over_limit(self) -> list[str]:
        """Ready adapters past ``max_on_disk``, least recently used first."""
        ready = self.db.execute(
            "SELECT id FROM adapters WHERE status = 'ready' "
            "ORDER BY COALESCE(last_used, created) DESC"
        ).fetchall()
        return [adapter_id for (adapter_id,) in ready[self.config.max_on_disk :]][::-1]

    # reading

    def adapters(
        self, cluster_id: int | None = None, *, status: str | None = "ready"
    ) -> list[AdapterRecord]:
        """Registered adapters, by cluster then position."""
        clauses, args = [], []
        if cluster_id is not None:
            clauses, args = ["cluster_id = ?"], [cluster_id]
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        rows = self.db["adapters"].rows_where(
            " AND ".join(clauses) or None, args, order_by="cluster_id, position"
        )
        return [self._record(r) for r in rows]

    def get(self, adapter_id: str) -> AdapterRecord:
        row = next(self.db["adapters"].rows_where("id = ?", [adapter_id]), None)
        if row is None:
            raise NotFoundError(f"no adapter {adapter_id!r} in the registry")
        return self._record(row)

    def centroids(self, tag: str | None = None) -> list[tuple[int, np.ndarray]]:
        """(cluster id, centroid) of every cluster with a ready adapter (of ``tag``)."""
        rows = self.db.execute(
            "SELECT cluster_id, centroid FROM adapters WHERE status = 'ready'"
            + (" AND tag = ?" if tag is not None else "")
            + " GROUP BY cluster_id",
            [tag] if tag is not None else [],
        )
        return [(cluster_id, np.frombuffer(blob, dtype=np.float32)) for cluster_id, blob in rows]

    def tags(self) -> list[str]:
        """The tags that have a ready adapter."""
        rows = self.db.execute("SELECT DISTINCT tag FROM adapters WHERE status = 'ready'")
        return [tag for (tag,) in rows if tag is not None]

    def trials(self, cluster_id: int | None = None) -> list[TrialRecord]:
        """The trial log, oldest first."""
        where, args = ("cluster_id = ?", [cluster_id]) if cluster_id is not None else (None, [])
        rows = self.db["trials"].rows_where(where, args, order_by="id")
        return [
            TrialRecord(
                **{**r, "config": json.loads(r["config"]), "curve": json.loads(r["curve"] or "[]")}
            )
            for r in rows
        ]

    def intact(self, record: AdapterRecord) -> bool:
        """Whether the adapter's files still match the checksum they were registered with."""
        folder = Path(record.path)
        return folder.is_dir() and folder_checksum(folder) == record.checksum

    def _record(self, row: dict[str, Any]) -> AdapterRecord:
        data = {k: v for k, v in row.items() if k != "centroid"}
        data["config"] = json.loads(data["config"])
        data["route_all"] = bool(data.get("route_all"))  # NULL in a migrated file
        data["path"] = str(self.root / data["path"])
        return AdapterRecord(**data)

    def _ensure_tables(self) -> None:
        with transaction(self.db):
            self.db["adapters"].create(
                {
                    "id": str,
                    "cluster_id": int,
                    "cluster_version": int,
                    "tag": str,
                    "position": int,
                    "config": str,
                    "val_em": float,
                    "val_loss": float,
                    "base_val_em": float,
                    "canary_em": float,
                    "train_seconds": float,
                    "samples": int,
                    "route_all": int,
                    "centroid": bytes,
                    "path": str,
                    "checksum": str,
                    "status": str,
                    "created": float,
                    "last_used": float,
                    "uses": int,
                    "wins": int,
                },
                pk="id",
                if_not_exists=True,
            )
            self.db["trials"].create(
                {
                    "id": int,
                    "cluster_id": int,
                    "cluster_version": int,
                    "number": int,
                    "config": str,
                    "val_em": float,
                    "val_loss": float,
                    "canary_em": float,
                    "seconds": float,
                    "outcome": str,
                    "adapter_id": str,
                    "created": float,
                    "curve": str,
                    "rung": int,
                    "generated_em": float,
                    "agreement": float,
                },
                pk="id",
                if_not_exists=True,
            )
            self.db["adapters"].create_index(["cluster_id"], if_not_exists=True)


_ADAPTER_FOLDER = re.compile(r"[0-9a-f]{12}")
"""An adapter's folder name (its id); nothing else in the root is ever removed."""


def folder_checksum(folder: Path) -> str:
    """SHA-256 over the adapter's files (names and contents), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
