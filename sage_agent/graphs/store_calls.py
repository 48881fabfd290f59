"""The graph's calls of the LoRA Store tool: when a cluster is trained (the call the
graph writes), the ToolNode that runs it, and what its result says. The answer node's
failures and the planner's use the same three."""

from __future__ import annotations

import uuid

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langgraph.config import get_config
from langgraph.prebuilt import ToolNode

from sage_agent.context import SageContext
from sage_agent.graphs.state import SageState
from sage_agent.records import TrainingNote
from sage_agent.store import needs_training
from sage_agent.tools import LoRAStoreTool

_STORE_TOOL = ToolNode([LoRAStoreTool()], messages_key="store_calls")


def store_call(context: SageContext, cluster_id: int) -> AIMessage | None:
    """The tool call that trains the cluster, when this run trains and the cluster
    ``needs_training``; else None."""
    if not context.train or context.store is None or context.buffer is None:
        return None
    if not needs_training(context.buffer.cluster(cluster_id), context.store):
        return None
    call = {
        "name": "lora_store",
        "args": {"cluster_id": cluster_id, "budget_seconds": context.budget_seconds},
        "id": f"call-{uuid.uuid4().hex[:12]}",
    }
    return AIMessage(content="", tool_calls=[call])


def pending(state: SageState) -> bool:
    """Whether the last store message is a call not yet run."""
    messages: list[AnyMessage] = state.get("store_calls") or []
    return bool(messages) and isinstance(messages[-1], AIMessage) and bool(messages[-1].tool_calls)


def run_store_call(state: SageState) -> SageState:
    """Run the pending call with the LoRAStoreTool (it reads the node's runtime context
    and streams the store's progress through the node's stream writer)."""
    return _STORE_TOOL.invoke(state, get_config())


def training_note(message: AnyMessage) -> TrainingNote:
    """What the tool's result message says: its status, summary and kept adapters."""
    assert isinstance(message, ToolMessage)
    records = (message.artifact or []) if message.status != "error" else []
    return {
        "status": message.status,
        "summary": message.text,
        "adapters": [r["id"] for r in records],
        "val_em": [r["val_em"] for r in records],
        "base_val_em": records[0]["base_val_em"] if records else None,
    }
