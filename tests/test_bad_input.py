"""The bad-input catalogue: every public entry point fed what it must refuse. Each gets a
clear error (on the command line: exit 1, one line, no traceback) at once, and what is
stored stays as it was."""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sage_agent import (
    AdapterError,
    BufferConfig,
    ConfigError,
    CorruptAdapter,
    ExpressionError,
    InvalidInput,
    NotFoundError,
    SageError,
    StoreConfig,
    StoreError,
    Trigger,
    arithmetic_verifier,
    parse_number,
)
from sage_agent.app.cli import main
from sage_agent.store import LoRAStore
from sage_agent.tools import LoRAStoreTool
from tests.support.bad_input import CLI_CASES, HANG, bad_lines, stored
from tests.support.stores import LEARNABLE, make_cluster
from tests.support.tiny import nine_task, nines_agent


@pytest.fixture(scope="module")
def project(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A database with a finished run, a trained adapter and a data file."""
    from tests.support.tiny import BagOfWordsEmbeddings

    folder = tmp_path_factory.mktemp("project")
    data = folder / "tasks.jsonl"
    data.write_text("".join(json.dumps(nine_task(i)) + "\n" for i in range(4)))
    agent = nines_agent(folder / "sage.db", tiny_model_dir, BagOfWordsEmbeddings())
    agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0)
    assert agent.store.adapters()
    return {"db": folder / "sage.db", "data": data, "folder": folder, "agent": agent}


@pytest.mark.parametrize(("argv", "words"), CLI_CASES, ids=lambda c: str(c)[:40])
def test_the_command_line_refuses_in_one_line(argv, words, project, capsys) -> None:
    bad = bad_lines(project["folder"])
    argv = [a.format(bad=bad, data=project["data"], folder=project["folder"]) for a in argv]
    before = stored(project["db"])
    started = time.perf_counter()
    assert main([*argv, "--db", str(project["db"])]) == 1
    assert time.perf_counter() - started < HANG
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert stored(project["db"]) == before


@pytest.mark.parametrize(
    "database",
    ["a text file", "missing folder", "a newer schema"],
)
def test_the_command_line_refuses_a_database_it_cannot_use(database, tmp_path, capsys) -> None:
    path = tmp_path / "x.db"
    if database == "a text file":
        path.write_text("not a database")
    elif database == "missing folder":
        path = tmp_path / "nowhere" / "x.db"
    else:
        from sage_agent.database import SCHEMA_VERSION, open_database

        db = open_database(path)
        db["meta"].update("schema_version", {"value": str(SCHEMA_VERSION + 1)})
        # Closed before the bytes are read: a connection the garbage collector
        # closes later checkpoints its WAL into the file.
        db.close()
    before = path.read_bytes() if path.exists() else None
    assert main(["clusters", "list", "--db", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sage-agent: error: ") and "Traceback" not in err
    assert (path.read_bytes() if path.exists() else None) == before


def test_the_demo_never_deletes_a_database_it_did_not_make(project, tmp_path, capsys) -> None:
    other = tmp_path / "mine.db"
    other.write_text("my notes")
    assert main(["demo", "--db", str(other)]) == 1
    assert "is not a demo database" in capsys.readouterr().err
    assert other.read_text() == "my notes"
    before = stored(project["db"])
    assert main(["demo", "--db", str(project["db"])]) == 1
    assert stored(project["db"]) == before


def _refuses(call: Callable[[], object], error: type[BaseException], words: str) -> None:
    started = time.perf_counter()
    with pytest.raises(error, match=words):
        call()
    assert time.perf_counter() - started < HANG


def test_library_entry_points_refuse_bad_values(project, tmp_path, bow_embeddings) -> None:
    agent = project["agent"]
    chat, store, buffer = agent.model, agent.store, agent.buffer
    before = stored(project["db"])

    _refuses(lambda: chat.invoke("x " * 5000), InvalidInput, "exceeds the context")
    _refuses(lambda: chat.set_adapter("../../x"), NotFoundError, "no adapter named")
    _refuses(lambda: chat.load_adapter(tmp_path, "x"), AdapterError, "no peft adapter")
    trigger = Trigger(embeddings=bow_embeddings)
    _refuses(lambda: trigger.score("7", math.nan), InvalidInput, "finite number")
    _refuses(lambda: trigger.score("7", "7", logits_margin=math.inf), InvalidInput, "finite")
    _refuses(lambda: trigger.score("7", "  "), InvalidInput, "reference is empty")
    _refuses(lambda: buffer.add(""), InvalidInput, "non-empty string")
    _refuses(lambda: buffer.add("a", payload={"x": math.nan}), InvalidInput, "JSON")
    _refuses(lambda: buffer.cluster(10**9), NotFoundError, "no cluster")
    _refuses(lambda: store.load("../../x"), NotFoundError, "no adapter '../../x'")
    _refuses(lambda: store.remove("../../x"), NotFoundError, "no adapter")
    small = make_cluster(bow_embeddings, n=3)
    _refuses(lambda: store.optimize(small), StoreError, "training needs at least")
    _refuses(lambda: store.optimize(small, max_seconds=math.nan), StoreError, "positive")
    tool = LoRAStoreTool(store=store, buffer=buffer)
    for args in ({"cluster_id": 10**9}, {"cluster_id": 1, "budget_seconds": -1}):
        message = tool.invoke({"type": "tool_call", "id": "c", "name": tool.name, "args": args})
        assert message.status == "error"
    assert "validation error" in tool.invoke({"cluster_id": "one"})  # arguments checked
    for text in ("", "((((9**64)**64)**64)**64)", "-" * 5000 + "1", "1e308*10", "__import__"):
        _refuses(lambda t=text: arithmetic_verifier(t), ExpressionError, "")
    started = time.perf_counter()
    assert parse_number(" " * 200_000 + "-" + " " * 200_000) is None
    assert time.perf_counter() - started < HANG
    assert stored(project["db"]) == before


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: StoreConfig().replace(max_seconds=math.nan), "max_seconds"),
        (lambda: StoreConfig().replace(learning_rates=(math.nan, 1e-3)), "learning_rates"),
        (lambda: StoreConfig().replace(min_train_samples=-1), "min_train_samples"),
        (lambda: StoreConfig().replace(route_threshold=math.inf), "route_threshold"),
        (lambda: BufferConfig(tau=math.nan), "tau"),
        (lambda: BufferConfig(buffer_size=0), "buffer_size"),
    ],
)
def test_configs_refuse_bad_values(make, words) -> None:
    _refuses(make, ConfigError, words)


def test_a_pickle_where_safetensors_belong_is_never_loaded(project, tmp_path) -> None:
    agent = project["agent"]
    adapter = agent.store.adapters()[0]
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        (Path(adapter.path) / "adapter_config.json").read_text()
    )
    (folder / "adapter_model.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    _refuses(lambda: agent.model.load_adapter(folder, "pickled"), AdapterError, "cannot load")
    assert "pickled" not in agent.model.adapters

    store = LoRAStore(
        project["db"], project["db"].with_name("sage-adapters"), agent.model, LEARNABLE
    )
    weights = Path(adapter.path) / "adapter_model.safetensors"
    original = weights.read_bytes()
    try:  # a registered adapter's weights swapped for a pickle: refused by its checksum
        weights.write_bytes(pickle.dumps({"evil": 1}))
        _refuses(lambda: store.load(adapter.id), CorruptAdapter, "does not match its checksum")
    finally:
        weights.write_bytes(original)
        store.registry.db["adapters"].update(adapter.id, {"status": "ready"})


def test_every_refusal_above_is_a_sage_error() -> None:
    for error in (
        AdapterError,
        ConfigError,
        CorruptAdapter,
        ExpressionError,
        InvalidInput,
        NotFoundError,
        StoreError,
    ):
        assert issubclass(error, SageError)
