"""Safe to serve: many threads on one store, checkpoints that cannot run code, clients
kept inside a root, bounded growth (each part of it on the tiny llama)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sage_agent import SageAgent, UnsafeCheckpoint
from sage_agent.app.cli import main
from sage_agent.checkpoints import StrictSerializer
from sage_agent.database import open_database, this_owner, transaction
from tests.support.checkpoints import plant
from tests.support.tiny import nine_task, nines_agent

# checkpoints


@pytest.fixture
def planted(tiny_model_dir: Path, tmp_path: Path, bow_embeddings) -> tuple[Path, str, Path]:
    db = tmp_path / "sage.db"
    agent = nines_agent(db, tiny_model_dir, bow_embeddings)
    summary = agent.run([nine_task(1)], train=False)
    marker = tmp_path / "ran"
    plant(db, marker)
    return db, summary.threads[0], marker


def test_the_strict_serializer_refuses_a_planted_call(planted, tmp_path: Path) -> None:
    db, _, marker = planted
    kind, blob = (
        sqlite3.connect(db)
        .execute("SELECT type, checkpoint FROM checkpoints ORDER BY rowid DESC LIMIT 1")
        .fetchone()
    )
    with pytest.raises(UnsafeCheckpoint, match=r"os\.system"):
        StrictSerializer().loads_typed((kind, blob))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["trace", "report"])
def test_trace_and_report_refuse_a_planted_checkpoint_in_one_line(
    planted, command: str, capsys
) -> None:
    db, thread, marker = planted
    argv = {
        "trace": ["trace", thread, "--db", str(db)],
        "report": ["report", "--db", str(db), "--out", str(db.with_suffix(".html"))],
    }[command]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names os.system" in err[0] and "Traceback" not in err[0]
    assert not marker.exists()


def test_resume_refuses_a_planted_checkpoint(planted, tiny_model_dir, bow_embeddings) -> None:
    db, thread, marker = planted
    connection = sqlite3.connect(db)
    connection.execute("UPDATE runs SET finished = NULL, owner = NULL")
    connection.commit()
    agent = nines_agent(db, tiny_model_dir, bow_embeddings)
    run_id = thread.split(":")[0]
    with pytest.raises(UnsafeCheckpoint, match=r"os\.system"):
        agent.run([nine_task(1)], run_id=run_id, train=False)
    assert not marker.exists()


def test_what_the_graph_writes_reads_back_strictly(
    tiny_model_dir, tmp_path, bow_embeddings
) -> None:
    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)
    agent.run([nine_task(i) for i in range(3)], train=False)
    again = SageAgent(tmp_path / "sage.db", agent.model, embeddings=bow_embeddings)
    assert all(again.state(t["id"]).get("result") for t in again.threads())


# threads on one database


def test_threads_write_through_one_database_without_losing_a_row(tmp_path: Path) -> None:
    db = open_database(tmp_path / "sage.db")
    with transaction(db):
        db["rows"].create({"id": int, "thread": int}, pk="id")
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(50):
                with transaction(db):
                    db["rows"].insert({"id": k * 1000 + i, "thread": k})
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and db["rows"].count == 400


def test_owners_are_threads(tmp_path: Path) -> None:
    from sage_agent.database import owner_alive

    mine = this_owner()
    assert owner_alive(mine) is True
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(this_owner()))
    worker.start()
    worker.join()
    assert seen[0] != mine and owner_alive(seen[0]) is False  # that thread has ended
    assert owner_alive("another-host:1:2") is None  # decided by its heartbeat's expiry


# Studio's contexts


def test_fifty_databases_share_one_model_and_a_bounded_cache(monkeypatch, tmp_path) -> None:
    from sage_agent.graphs import studio

    monkeypatch.setenv("SAGE_STUDIO_ROOT", str(tmp_path))
    studio._context.cache_clear()
    contexts = [studio.StudioContext(db=f"client-{i}.db").resolve() for i in range(50)]
    assert len({id(c.model) for c in contexts}) == 1
    assert studio._context.cache_info().currsize <= studio.MAX_DATABASES
    assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted(
        f"client-{i}.db" for i in range(50)
    )


@pytest.mark.parametrize("db", ["/etc/passwd.db", "../up.db", "a/../../up.db", "x\x00.db"])
def test_studio_refuses_a_db_outside_its_root(monkeypatch, tmp_path, db: str) -> None:
    from pydantic import ValidationError

    from sage_agent.graphs.studio import StudioContext

    monkeypatch.setenv("SAGE_STUDIO_ROOT", str(tmp_path))
    with pytest.raises(ValidationError, match="root"):
        StudioContext(db=db)


# one adapter folder per database


def test_two_databases_of_one_stem_cannot_share_an_adapter_folder(
    tiny_chat, tmp_path: Path, bow_embeddings
) -> None:
    from sage_agent.errors import ConfigError
    from sage_agent.store import LoRAStore, adapter_root

    first, second = tmp_path / "project.db", tmp_path / "project.sqlite"
    assert adapter_root(first) == adapter_root(second)
    store = LoRAStore(first, adapter_root(first), tiny_chat, embeddings=bow_embeddings)
    kept = adapter_root(first) / "0123456789ab"  # as if an adapter of the first
    kept.mkdir()
    with pytest.raises(ConfigError, match="belongs to another database"):
        LoRAStore(second, adapter_root(second), tiny_chat, embeddings=bow_embeddings)
    assert kept.is_dir()  # the second database's sweep never ran
    LoRAStore(first, adapter_root(first), tiny_chat, embeddings=bow_embeddings)  # still its own
    assert store.registry.root == adapter_root(first)


# the demo's database


def test_a_second_demo_refuses_to_delete_a_live_one(tmp_path: Path) -> None:
    from sage_agent.app.demo import _start_afresh
    from sage_agent.errors import RunError
    from sage_agent.runs import RunRegistry

    db = tmp_path / "sage-demo.db"
    runs = RunRegistry(db)
    with transaction(runs.db):
        runs.db["meta"].upsert({"key": "demo", "value": "1"}, pk="key")
    runs.start("live", "run", {"data": "generated"}, this_owner())
    with pytest.raises(RunError, match="a demo is running"):
        _start_afresh(db)
    assert db.exists()
    runs.finish("live", {})
    _start_afresh(db)  # a finished demo's database is replaced
    assert not db.exists()


# bounded growth


def test_a_finished_thread_keeps_one_checkpoint_and_its_history(
    tiny_model_dir, tmp_path: Path, bow_embeddings
) -> None:
    from sage_agent.report import read_thread

    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)
    summary = agent.run([nine_task(i) for i in range(3)], train=False)
    connection = sqlite3.connect(tmp_path / "sage.db")
    per_thread = dict(
        connection.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id")
    )
    assert per_thread == dict.fromkeys(summary.threads, 1)
    trace = read_thread(agent, summary.threads[0])
    assert trace.path[:4] == ["decompose", "route", "answer", "trigger"] and trace.rows
    assert len(trace.checkpoints) > 5 and trace.checkpoints[-1].values["result"]
    connection.execute("UPDATE runs SET finished = NULL")  # as if killed before its end
    connection.commit()
    again = agent.run([nine_task(i) for i in range(3)], run_id=summary.run_id, train=False)
    assert again.steps == summary.steps  # a resumed run reads its pruned threads
    assert read_thread(agent, summary.threads[0]).path == trace.path  # history kept


def test_a_task_with_too_many_steps_or_a_huge_line_is_refused(tmp_path: Path) -> None:
    import json

    from sage_agent.errors import DataError, MalformedTask
    from sage_agent.tasks.data import read_tasks
    from sage_agent.tasks.steps import MAX_STEPS, steps_from_gsm8k

    answer = "\n".join(f"<<{i}+1={i + 1}>>" for i in range(10_000)) + "\n#### 1"
    with pytest.raises(MalformedTask, match=f"at most {MAX_STEPS}"):
        steps_from_gsm8k({"question": "q", "answer": answer}, "t")
    data = tmp_path / "huge.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": answer}) + "\n")
    with pytest.raises(DataError, match="characters"):
        read_tasks(data, strict=True)
    assert read_tasks(data) == []  # skipped with a warning by default


# read-only copies


@pytest.mark.system
def test_trace_report_and_listings_read_a_read_only_mount(
    tiny_model_dir, tmp_path: Path, bow_embeddings, capsys
) -> None:
    """A database and adapter folder on a read-only bind mount (root cannot write there
    either) are read through a snapshot; nothing is written beside them."""
    import shutil
    import subprocess

    source, mount = tmp_path / "source", tmp_path / "mount"
    source.mkdir()
    mount.mkdir()
    agent = nines_agent(source / "sage.db", tiny_model_dir, bow_embeddings)
    summary = agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained)
    del agent

    def files() -> list[str]:  # the WAL's files come and go with the writer's connections
        return sorted(p.name for p in source.rglob("*") if not p.name.endswith(("-wal", "-shm")))

    before = files()
    bound = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)], check=False)
    if bound.returncode != 0:
        pytest.skip("no read-only bind mount here")
    try:
        db = str(mount / "sage.db")
        out = tmp_path / "out"
        out.mkdir()
        assert main(["trace", summary.threads[-1], "--db", db]) == 0
        assert main(["report", "--db", db, "--out", str(out / "report.html")]) == 0
        assert main(["adapters", "list", "--db", db]) == 0
        assert main(["clusters", "list", "--db", db]) == 0
        assert (out / "report.html").is_file()
        assert "Traceback" not in capsys.readouterr().err
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)
    assert files() == before
    shutil.rmtree(source)


# many threads on one context


THREAD_SECONDS = 20  # each of 16 threads; bench_reliability runs two minutes


def test_sixteen_threads_share_one_context(tiny_model_dir, tmp_path: Path, bow_embeddings) -> None:
    from sage_agent import ChatSage, build_context
    from tests.support.threads import run_threads
    from tests.support.tiny import NINES, SMALL_BUFFER

    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    db = tmp_path / "sage.db"
    context = build_context(
        db, chat, embeddings=bow_embeddings, buffer_config=SMALL_BUFFER, store_config=NINES
    )
    report = run_threads(context, db, threads=16, seconds=THREAD_SECONDS)
    assert report.errors == []
    assert report.turns > 0 and report.graph_runs > 0
    assert report.failures > 0 and report.samples == report.failures  # each buffered once
    assert report.searches_twice == 0  # no cluster version trained by two threads


def test_a_lease_elsewhere_expires_with_its_heartbeat_and_can_be_taken_over(
    tmp_path: Path,
) -> None:
    from sage_agent.errors import RunError
    from sage_agent.runs import LEASE_SECONDS, RunRegistry

    runs = RunRegistry(tmp_path / "sage.db")
    runs.start("r1", "run", {}, "other-host:42:7")
    me = this_owner()
    with pytest.raises(RunError, match="running in another process"):
        runs.lease("r1", me)  # its heartbeat is fresh
    runs.lease("r1", me, take_over=True)  # said explicitly
    assert runs.get("r1")["owner"] == me
    runs.start("r2", "run", {}, "other-host:42:7")
    with transaction(runs.db):  # its machine went away: no heartbeat for too long
        runs.db["runs"].update("r2", {"heartbeat": runs.get("r2")["heartbeat"] - LEASE_SECONDS})
    runs.lease("r2", me)
    assert runs.get("r2")["owner"] == me


def test_keep_checkpoints_keeps_a_finished_thread_whole(
    tiny_model_dir, tmp_path: Path, bow_embeddings
) -> None:
    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)
    agent.keep_checkpoints = True
    summary = agent.run([nine_task(1)], train=False)
    config = {"configurable": {"thread_id": summary.threads[0]}}
    assert len(list(agent.graph.get_state_history(config))) > 5
