"""The graph's calls of the LoRA Store tool: when a cluster is trained (the call the
graph writes), the ToolNode that runs it, and what its result says. The answer node's
failures and the planner's use the same three."""

from __future__ import annotations

import time
import uuid

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langgraph.config import get_config
from langgraph.prebuilt import ToolNode

from sage_agent.context import SageContext
from sage_agent.errors import NotFoundError
from sage_agent.graphs.state import SageState
from sage_agent.records import TrainingNote
from sage_agent.store import needs_training
from sage_agent.tasks.plans import PLAN_TAG
from sage_agent.tools import LoRAStoreTool

_STORE_TOOL = ToolNode([LoRAStoreTool()], messages_key="store_calls")


def store_call(context: SageContext, cluster_id: int) -> AIMessage | None:
    """The tool call that trains the cluster, when this run trains and the cluster
    ``needs_training``; else None."""
    if not context.train or context.store is None or context.buffer is None:
        return None
    cluster = context.buffer.cluster(cluster_id)
    if not needs_training(cluster, context.store):
        return None
    budget = context.budget_seconds
    if context.adaptation is not None:
        wanted, keep = budget or context.store.config.search.max_seconds, 0.0
        if context.planner is not None and cluster.tag == PLAN_TAG:
            # A plan trial trains on pairs five times a step's length: one search's budget
            # buys it a few optimiser steps, so the plan cluster gets what is left of its share.
            wanted = max(wanted, context.adaptation.kept_for_planner)
        elif context.planner is not None:
            keep = context.adaptation.kept_for_planner
        budget = context.adaptation.search_seconds(wanted, keep=keep)
        if budget is None:
            return None
    call = {
        "name": "lora_store",
        "args": {"cluster_id": cluster_id, "budget_seconds": budget},
        "id": f"call-{uuid.uuid4().hex[:12]}",
    }
    return AIMessage(content="", tool_calls=[call])


def pending(state: SageState) -> bool:
    """Whether the last store message is a call not yet run."""
    messages: list[AnyMessage] = state.get("store_calls") or []
    return bool(messages) and isinstance(messages[-1], AIMessage) and bool(messages[-1].tool_calls)


def run_store_call(state: SageState, context: SageContext) -> SageState:
    """Run the pending call with the LoRAStoreTool (it reads the node's runtime context
    and streams the store's progress through the node's stream writer). Its wall seconds
    go on the result message (``response_metadata["seconds"]``, checkpointed with it,
    and ``"planner"``: whether it trained the plan cluster) and are charged to the run's
    adaptation budget."""
    messages: list[AnyMessage] = state.get("store_calls") or []
    call = messages[-1].tool_calls[0]  # type: ignore[attr-defined]
    planner = _trains_plans(context, call["args"]["cluster_id"])
    started = time.perf_counter()
    update = _STORE_TOOL.invoke(state, get_config())
    seconds = time.perf_counter() - started
    update["store_calls"][-1].response_metadata.update(seconds=seconds, planner=planner)
    if context.adaptation is not None:
        context.adaptation.charge(seconds, planner=planner)
    return update


def _trains_plans(context: SageContext, cluster_id: int) -> bool:
    """Whether the call trains the plan cluster (an unknown cluster is the tool's error)."""
    try:
        return context.buffer is not None and context.buffer.cluster(cluster_id).tag == PLAN_TAG
    except NotFoundError:
        return False


def adaptation_seconds(state: SageState, *, planner: bool = False) -> float:
    """The seconds a thread spent in the LoRA Store (``planner``: on the plan cluster
    only), from its checkpointed results."""
    return sum(
        message.response_metadata.get("seconds", 0.0)
        for message in state.get("store_calls") or []
        if isinstance(message, ToolMessage)
        and (not planner or message.response_metadata.get("planner", False))
    )


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
        "seconds": message.response_metadata.get("seconds"),
    }
