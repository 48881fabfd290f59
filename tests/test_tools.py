"""The LoRA Store tools as LangChain tools: schemas, artifacts, and errors as ToolMessages."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage

from sage_agent import ChatSage
from sage_agent.buffer import BufferConfig, Cluster, TriggerBuffer
from sage_agent.store import LoRAStore, StoreConfig, needs_training
from sage_agent.tools import LoRAStoreTool, RouteAdapterTool

FAST = StoreConfig().replace(
    learning_rates=(5e-3, 2e-2),
    epochs=(6,),
    ranks=(4,),
    last_layers=(None,),
    max_trials=2,
    n_random=2,
    top_k=1,
    keep=1,
    max_on_disk=5,
)


@pytest.fixture
def parts(tiny_model_dir: Path, tmp_path: Path, bow_embeddings):
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    db = tmp_path / "sage.sqlite"
    buffer = TriggerBuffer(
        db, BufferConfig(buffer_size=20, min_cluster_size=5), embeddings=bow_embeddings
    )
    store = LoRAStore(db, tmp_path / "adapters", chat, FAST, embeddings=bow_embeddings)
    return buffer, store


def _fill(buffer: TriggerBuffer, n: int) -> int:
    for i in range(n):
        buffer.add(f"Compute {i}+{9 - i}. apples", tag="+", payload={"reference": "9"})
    (cluster,) = buffer.clusters("+")
    return cluster.id


def _call(tool, args: dict) -> ToolMessage:
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


def test_lora_store_tool_trains_and_returns_records(parts) -> None:
    buffer, store = parts
    cluster_id = _fill(buffer, 20)
    tool = LoRAStoreTool(store=store, buffer=buffer)
    assert set(tool.args) == {"cluster_id", "budget_seconds"}
    message = _call(tool, {"cluster_id": cluster_id})
    assert isinstance(message, ToolMessage) and message.status == "success"
    assert f"cluster {cluster_id}" in message.content and "Kept 1 adapters" in message.content
    (record,) = message.artifact
    assert record["cluster_id"] == cluster_id and Path(record["path"]).is_dir()
    assert not needs_training(buffer.cluster(cluster_id), store)  # marked trained
    again = _call(tool, {"cluster_id": cluster_id})
    assert again.status == "error" and "does not need training" in again.content

    routed = _call(RouteAdapterTool(store=store), {"text": "Compute 2+5. apples"})
    assert [r["id"] for r in routed.artifact] == [record["id"]]
    assert "base model first" in routed.content and "surer" in routed.content  # the contest
    nothing = _call(RouteAdapterTool(store=store), {"text": "weather report for Tuesday"})
    assert nothing.artifact == [] and "base model" in nothing.content


def test_errors_become_error_tool_messages(parts) -> None:
    buffer, store = parts
    tool = LoRAStoreTool(store=store, buffer=buffer)
    unknown = _call(tool, {"cluster_id": 999})
    assert unknown.status == "error" and "no cluster with id 999" in unknown.content
    small = TriggerBuffer(
        buffer.path, BufferConfig(buffer_size=5, min_cluster_size=2), embeddings=buffer.embeddings
    )
    for i in range(5):
        small.add(f"Compute {i}*3. pears", tag="*", payload={"reference": str(3 * i)})
    (cluster,) = small.clusters("*")
    too_small = _call(tool, {"cluster_id": cluster.id})
    assert too_small.status == "error" and "training needs 12" in too_small.content
    unwired = _call(LoRAStoreTool(), {"cluster_id": 1})  # no store, not inside a graph
    assert unwired.status == "error" and "no LoRA Store" in unwired.content
    assert "runtime" not in LoRAStoreTool().tool_call_schema.model_json_schema()["properties"]


def test_args_are_validated(parts) -> None:
    buffer, store = parts
    tool = LoRAStoreTool(store=store, buffer=buffer)
    # An agent gets bad arguments back as an error message, never an exception.
    assert "validation error" in tool.invoke({"cluster_id": 1, "budget_seconds": -5})
    call = {"type": "tool_call", "id": "c1", "name": tool.name, "args": {"cluster_id": "x"}}
    message = tool.invoke(call)
    assert message.status == "error" and "validation error" in message.content


@pytest.mark.parametrize(
    ("size", "version", "trained_version", "trained_size", "trains"),
    [
        (11, 1, None, None, False),  # below min_train_samples (12)
        (12, 1, None, None, True),  # big enough, never trained
        (30, 3, 3, 30, False),  # trained on exactly these members
        (59, 9, 3, 30, False),  # grown, but not retrain_growth (2) times
        (60, 9, 3, 30, True),  # twice the members it was trained on
    ],
)
def test_the_retraining_rule(size, version, trained_version, trained_size, trains, parts) -> None:
    _, store = parts
    cluster = Cluster(1, "+", size, None, frozenset(), version, trained_version, trained_size, [])
    assert needs_training(cluster, store) is trains
