"""Faults injected into the store and the database: a full disk, out of memory in a trial,
what a killed process leaves behind."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from sage_agent import ChatSage, DatabaseError
from sage_agent.database import SCHEMA_VERSION, open_database, transaction
from sage_agent.store import LoRAStore
from tests.support.stores import LEARNABLE, make_cluster


@pytest.fixture
def chat(tiny_model_dir: Path) -> ChatSage:
    return ChatSage(model=str(tiny_model_dir), max_tokens=4)


def _store(chat, tmp_path: Path, embeddings, **changes) -> LoRAStore:
    config = LEARNABLE.replace(**changes)
    return LoRAStore(tmp_path / "db.sqlite", tmp_path / "adapters", chat, config, embeddings)


def test_a_full_disk_while_saving_an_adapter_registers_nothing(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    import sage_agent.training.adapter_files as adapter_files

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = _store(chat, tmp_path, bow_embeddings, max_trials=2, n_random=2, keep=1)
    monkeypatch.setattr(adapter_files, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        store.optimize(make_cluster(bow_embeddings))
    assert store.adapters(status=None) == []
    assert list(store.registry.root.glob("[!.]*")) == []  # no temporary folder either
    assert chat.adapters == {}  # the trials' adapters were freed


def test_a_full_database_is_a_clear_error_and_writes_nothing(tmp_path) -> None:
    db = open_database(tmp_path / "small.sqlite")
    db["notes"].create({"id": int, "text": str}, pk="id")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 2}")
    full = pytest.raises(DatabaseError, match="disk is full; nothing of this write was kept")
    with full, transaction(db):
        db["notes"].insert_all({"text": "x" * 4000} for _ in range(50))
    assert db["notes"].count == 0
    assert not db.conn.in_transaction
    with transaction(db):  # the file is usable again once there is room
        db["notes"].insert({"text": "small"})
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_out_of_memory_in_a_trial_drops_it_and_the_search_goes_on(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    import sage_agent.store.search as search

    calls = []

    class FailingSecond(search.LoRARun):
        def __init__(self, chat, name, *args, **kwargs):
            calls.append(name)
            super().__init__(chat, name, *args, **kwargs)

        def train(self, *args, **kwargs):
            if len(calls) > 1 and self.name == calls[1]:
                raise MemoryError("cannot allocate 2 GiB")
            return super().train(*args, **kwargs)

    monkeypatch.setattr(search, "LoRARun", FailingSecond)
    store = _store(chat, tmp_path, bow_embeddings)
    events: list[dict] = []
    kept = store.optimize(make_cluster(bow_embeddings), progress=events.append)
    assert kept and len(calls) == 5
    failed = [t for t in store.registry.trials() if t.outcome.startswith("failed")]
    assert len(failed) == 1 and "MemoryError: cannot allocate 2 GiB" in failed[0].outcome
    assert [e["trial"] for e in events if e["event"] == "trial_failed"] == [2]
    assert chat.adapters == {}


def test_a_search_whose_every_trial_fails_is_a_store_error(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    import sage_agent.store.search as search
    from sage_agent import StoreError

    class NoMemory(search.LoRARun):
        def train(self, *_args, **_kwargs):
            raise MemoryError("no memory at all")

    monkeypatch.setattr(search, "LoRARun", NoMemory)
    store = _store(chat, tmp_path, bow_embeddings)
    with pytest.raises(StoreError, match="every trial failed: MemoryError: no memory at all"):
        store.optimize(make_cluster(bow_embeddings))


def test_opening_a_store_sweeps_what_killed_processes_left(chat, tmp_path, bow_embeddings) -> None:
    store = _store(chat, tmp_path, bow_embeddings, keep=1)
    (kept,) = store.optimize(make_cluster(bow_embeddings))
    root = store.registry.root
    dead = root / ".tmp-0123456789ab-999999999"  # a pid no process has
    dead.mkdir()
    (dead / "adapter_model.safetensors").write_bytes(b"half")
    live = root / f".tmp-ba9876543210-{os.getpid()}"  # a process still writing it
    live.mkdir()
    unregistered = root / "00112233aabb"  # renamed, but the INSERT never committed
    unregistered.mkdir()
    mine = root / "notes.txt"  # not the store's: never touched
    mine.write_text("keep me")

    LoRAStore(tmp_path / "db.sqlite", root, chat, LEARNABLE, bow_embeddings)
    expected = [kept.id, live.name, "notes.txt", ".sage-database"]  # and the root's marker
    assert sorted(p.name for p in root.iterdir()) == sorted(expected)
    assert store.registry.intact(store.get(kept.id))


def test_a_store_opened_from_another_directory_finds_its_adapters(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    store = LoRAStore(
        "sage.db",
        "sage-adapters",
        chat,
        LEARNABLE.replace(keep=1),
        bow_embeddings,
    )
    (kept,) = store.optimize(make_cluster(bow_embeddings))
    monkeypatch.chdir(tmp_path)
    again = LoRAStore(
        project / "sage.db", project / "sage-adapters", chat, LEARNABLE, bow_embeddings
    )
    assert again.load(kept.id) == kept.id and again.get(kept.id).status == "ready"


def test_a_locked_database_waits_then_says_so(tmp_path) -> None:
    from sage_agent import DatabaseLocked

    path = tmp_path / "busy.sqlite"
    open_database(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        db = open_database(path, timeout=0.2)
        with pytest.raises(DatabaseLocked, match="locked by another process"), transaction(db):
            pass
    finally:
        holder.execute("ROLLBACK")


def _open(path: str) -> str:
    try:
        open_database(path, timeout=30)
    except Exception as error:  # reported to the test, not raised in the worker
        return f"{type(error).__name__}: {error}"
    return "ok"


def test_processes_creating_one_new_database_at_once_all_open_it(tmp_path) -> None:
    import multiprocessing

    paths = [str(tmp_path / f"new-{i}.db") for i in range(6)]  # a race: try it a few times
    with multiprocessing.get_context("fork").Pool(8) as pool:
        outcomes = pool.map(_open, [path for path in paths for _ in range(8)])
    assert outcomes == ["ok"] * len(outcomes)
    assert all(
        open_database(p)["meta"].get("schema_version")["value"] == str(SCHEMA_VERSION)
        for p in paths
    )


def test_an_adapter_of_another_base_model_is_refused_and_the_model_unchanged(
    chat, tmp_path, bow_embeddings, tiny_model_dir
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from sage_agent import AdapterError

    store = _store(chat, tmp_path, bow_embeddings, keep=1)
    (kept,) = store.optimize(make_cluster(bow_embeddings))
    wider = tmp_path / "wider"  # the same tokenizer, a base model of another width
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 48, 96
    LlamaForCausalLM(config).save_pretrained(wider)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            (wider / name).write_bytes((tiny_model_dir / name).read_bytes())
    other = ChatSage(model=str(wider), max_tokens=4)
    before = other.invoke("Compute 2+7.").text
    with pytest.raises(AdapterError, match="cannot load the adapter"):
        other.load_adapter(kept.path, "foreign")
    assert other.adapters == {} and other.invoke("Compute 2+7.").text == before
