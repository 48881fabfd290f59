"""The project's SQLite file: one schema version, a lock timeout, clear errors.

Every component (buffer, LoRA Store, runs) keeps its tables in the same file through
sqlite-utils. The file records the schema version it was written with; an older file is
migrated in one transaction, a newer one is refused before anything is written to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from sage_agent.errors import DatabaseError, DatabaseLocked, NotFoundError, SchemaVersionError

SCHEMA_VERSION = 7
"""2: adapters.rank became adapters.position (the LoRA rank is in its config), and
adapters.path is the folder's name under the adapter root, not a path from the working
directory; samples.key, clusters.claimed_by / claimed_until and runs.owner were added.
3: trials.curve, each trial's training loss per optimiser step.
4: trials.rung, trials.generated_em and trials.agreement (successive halving, trials
ranked teacher-forced and confirmed by generation).
5: adapters.route_all (an adapter that answers sure base answers too).
6: runs.heartbeat (a run's lease expires when its heartbeat stops), threads.history (what
a finished thread's pruned checkpoints did).
7: adapters.cluster_version (the version its search trained on: a rerun of that search
does not train on from it)."""


LOCK_TIMEOUT = 30.0
"""Seconds a write waits for another process's lock: the components', the runs' and the
checkpointer's connections all wait this long by default."""


def open_database(path: str | Path, *, timeout: float = LOCK_TIMEOUT) -> sqlite_utils.Database:
    """Open (or create) the project's database file and check its schema version.

    ``timeout`` is how long a write waits for another process's lock before
    :class:`DatabaseLocked` is raised.
    """
    path = Path(path)
    if not path.parent.exists():
        raise DatabaseError(f"folder {path.parent} does not exist; create it or pick another --db")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _open(path, timeout)
        except (DatabaseLocked, sqlite3.OperationalError) as error:
            # Opening takes locks of its own (creating the file, switching it to WAL),
            # which SQLite may refuse at once rather than wait for: wait here instead.
            if not _busy(error):
                raise DatabaseError(f"{path} cannot be opened: {error}") from error
            if time.monotonic() > deadline:
                raise DatabaseLocked(
                    f"{path} stayed locked by another process for {timeout:g} s; nothing "
                    "was written"
                ) from error
            time.sleep(0.05)
        except sqlite3.DatabaseError as error:
            raise DatabaseError(f"{path} is not a sage-agent SQLite database: {error}") from error


class SharedDatabase(sqlite_utils.Database):
    """A sqlite-utils Database that threads may share: each thread works through its own
    SQLite connection to the file, opened on its first use. One connection shared by
    threads mixes their transactions ("cannot start a transaction within a transaction",
    a commit of another thread's writes); with one each, SQLite's own locking orders the
    writers and WAL lets readers run beside them."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self._local = threading.local()
        super().__init__(self._connect())

    @property  # type: ignore[override]
    def conn(self) -> sqlite3.Connection:
        connection = getattr(self._local, "conn", None)
        if connection is None:
            connection = self._local.conn = self._connect()
        return connection

    @conn.setter
    def conn(self, connection: sqlite3.Connection) -> None:
        self._local.conn = connection

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        # NORMAL sync keeps every commit across a process crash (with WAL, a commit needs
        # no fsync of the main file); recursive triggers as sqlite-utils sets them.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA recursive_triggers=on")
        return connection


def _open(path: Path, timeout: float) -> sqlite_utils.Database:
    db = SharedDatabase(path, timeout)
    try:
        _check_version(db, path)
        # WAL: readers (sage-agent trace) never block the writer.
        db.execute("PRAGMA journal_mode=WAL")
    except BaseException:
        db.conn.close()
        raise
    return db


def adapter_root(db: str | Path) -> Path:
    """Where the adapters of database ``db`` live by default: ``<db stem>-adapters/``
    beside it (``sage.db`` keeps them in ``sage-adapters/``)."""
    db = Path(db).absolute()
    return db.with_name(f"{db.stem}-adapters")


def existing_database(db: Path) -> Path:
    """``db``, which a command reads: a NotFoundError when no file is there."""
    if not db.is_file():
        raise NotFoundError(f"no database at {db}; pass --db or run `sage-agent run` first")
    return db


def snapshot(path: Path, to: Path) -> Path:
    """A consistent copy of the database at ``path`` (with what its WAL holds), read
    without writing anything beside it, written to ``to``."""
    try:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:  # read-only, WAL included; needs the -shm file or a folder to make it in
            source.execute("SELECT 1 FROM sqlite_master").fetchall()
        except sqlite3.OperationalError:  # a read-only folder with no -shm: as it stands
            source.close()
            source = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        with contextlib.closing(source), contextlib.closing(sqlite3.connect(to)) as copy:
            source.backup(copy)
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"{path} cannot be read: {error}") from error
    return to


@contextlib.contextmanager
def reading(db: Path) -> Iterator[tuple[Path, Path | None]]:
    """The database (and adapter folder) a read-only command opens: the file itself, or,
    where it cannot be written (a read-only copy or mount: opening writes the schema, the
    WAL and the adapter folder's marker), a snapshot of it in a temporary folder."""
    root = adapter_root(db)
    if all(_writable(p) for p in (db, db.parent, root if root.exists() else db.parent)):
        yield db, None
        return
    with tempfile.TemporaryDirectory(prefix="sage-read-") as folder:
        yield snapshot(db, Path(folder) / db.name), Path(folder) / "adapters"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _busy(error: Exception) -> bool:
    return isinstance(error, DatabaseLocked) or "locked" in str(error) or "busy" in str(error)


def _check_version(db: sqlite_utils.Database, path: Path) -> None:
    if "meta" not in db.table_names():
        # Under the write lock, and looked at again there: two processes may create the
        # same new file at once, and only one of them writes its version.
        with transaction(db):
            tables = [t for t in db.table_names() if not t.startswith("sqlite_")]
            if "meta" not in tables:
                if tables:
                    raise SchemaVersionError(
                        f"{path} holds tables but no sage-agent schema version; it was not "
                        "written by sage-agent. Pick another --db; nothing was changed."
                    )
                version = {"key": "schema_version", "value": str(SCHEMA_VERSION)}
                db["meta"].insert(version, pk="key")
    row = next(db["meta"].rows_where("key = ?", ["schema_version"]), None)
    found = int(row["value"]) if row else None
    if found is not None and found < SCHEMA_VERSION:
        with transaction(db):  # looked at again under the lock: another may have migrated
            again = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            for version in range(int(again[0]), SCHEMA_VERSION):
                _MIGRATIONS[version](db)
            db["meta"].update("schema_version", {"value": str(SCHEMA_VERSION)})
        found = SCHEMA_VERSION
    if found != SCHEMA_VERSION:
        newer = found is not None and found > SCHEMA_VERSION
        raise SchemaVersionError(
            f"{path} has schema version {found}, this sage-agent reads version "
            f"{SCHEMA_VERSION}. "
            + ("Upgrade sage-agent to read it." if newer else "Start a new database file.")
            + " Nothing was changed."
        )


def _migrate_1_to_2(db: sqlite_utils.Database) -> None:
    tables = db.table_names()
    if "samples" in tables:  # idempotent adds and claims (see TriggerBuffer.add, .claim)
        db["samples"].add_column("key", str)
    if "clusters" in tables:
        db["clusters"].add_column("claimed_by", str)
        db["clusters"].add_column("claimed_until", float)
    if "runs" in tables:
        db["runs"].add_column("owner", str)
    if "adapters" in tables:
        db.execute("ALTER TABLE adapters RENAME COLUMN rank TO position")
        for adapter_id, path in db.execute("SELECT id, path FROM adapters").fetchall():
            db["adapters"].update(adapter_id, {"path": Path(path).name})
    if "canary" in db.table_names() and "expression" not in db["canary"].columns_dict:
        db["canary"].add_column("expression", str)


def _migrate_2_to_3(db: sqlite_utils.Database) -> None:
    if "trials" in db.table_names():  # loss curves, for the run report
        db["trials"].add_column("curve", str)


def _migrate_3_to_4(db: sqlite_utils.Database) -> None:
    if "trials" in db.table_names():
        for column in ("rung", "generated_em", "agreement"):
            db["trials"].add_column(column, int if column == "rung" else float)


def _migrate_4_to_5(db: sqlite_utils.Database) -> None:
    if "adapters" in db.table_names():  # NULL reads as False: routed as before
        db["adapters"].add_column("route_all", int)


def _migrate_5_to_6(db: sqlite_utils.Database) -> None:
    if "runs" in db.table_names():
        db["runs"].add_column("heartbeat", float)
    if "threads" in db.table_names():
        db["threads"].add_column("history", str)


def _migrate_6_to_7(db: sqlite_utils.Database) -> None:
    if "adapters" in db.table_names():  # NULL: kept by a search before versions were noted
        db["adapters"].add_column("cluster_version", int)


_MIGRATIONS = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
    5: _migrate_5_to_6,
    6: _migrate_6_to_7,
}
"""From version N to N + 1, each run inside the one transaction of the upgrade."""


def database_id(db: sqlite_utils.Database) -> str:
    """The database's own identity, made on first use: what its adapter folder is marked
    with, so that two databases never share (and sweep) one folder."""
    row = next(db["meta"].rows_where("key = 'database_id'"), None)
    if row is None:
        with transaction(db):  # looked at again under the lock: another may have made it
            row = next(db["meta"].rows_where("key = 'database_id'"), None)
            if row is None:
                row = {"key": "database_id", "value": uuid.uuid4().hex}
                db["meta"].insert(row, pk="key")
    return row["value"]


def this_owner() -> str:
    """Who holds a lease or a claim: this thread of this process, as "host:pid:thread"
    (threads of one process that share a store must not train one cluster twice)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process (or thread) named by ``owner`` still runs: known for an owner
    on this machine; None for one on another machine, whose heartbeat's expiry decides."""
    host, pid, thread = [*owner.split(":"), "", ""][:3]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if not process_alive(int(pid)):
        return False
    if thread and int(pid) == os.getpid():
        return any(str(t.ident) == thread for t in threading.enumerate())
    return True


def holds(owner: str | None, until: float | None, *, now: float) -> bool:
    """Whether a lease or claim held by ``owner`` (renewed by heartbeats up to ``until``)
    still stands: a live owner on this machine holds it however late its heartbeat (a
    suspended process, a clock step), a dead one does not; one on another machine holds it
    until its heartbeat expires."""
    if owner is None:
        return False
    alive = owner_alive(owner)
    return alive if alive is not None else until is not None and until > now


class Heartbeat:
    """Calls ``beat`` every ``every`` seconds on a daemon thread while in its ``with``
    block, so a lease or claim stays held while its owner works, and expires when it
    stops (killed, or on a machine that went away)."""

    def __init__(self, beat: Callable[[], None], every: float) -> None:
        self.beat, self.every = beat, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sage-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(DatabaseError, sqlite3.Error):  # the next beat retries
                self.beat()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def process_alive(pid: int) -> bool:
    """Whether a process of this machine is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front, so a transaction either
    waits for the lock (up to the timeout given to open_database) or fails before it has
    done anything; an error inside rolls everything back. sqlite-utils' own writes nest
    inside as savepoints. A full disk is a DatabaseError saying nothing was written."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        raise DatabaseLocked(
            f"{_path(db)} is locked by another process. Stop the other sage-agent run or "
            "raise the lock timeout; nothing was written."
        ) from error
    try:
        yield
        db.execute("COMMIT")
    except BaseException as error:
        # SQLite may have rolled back already (a full disk does): then there is nothing
        # to roll back, and trying would hide the real error behind "cannot rollback".
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
            raise DatabaseError(
                f"{_path(db)}: the disk is full; nothing of this write was kept. Free "
                "space and run again (a run resumes with --resume)."
            ) from error
        raise


def _path(db: sqlite_utils.Database) -> str:
    return db.execute("PRAGMA database_list").fetchone()[2]
