"""The SAGE graph's schemas (input, output, state) and the wrapper that times its nodes.

The state holds only serialisable records (``sage_agent.records``), so that every
checkpoint reads back as a trace; the runtime dependencies come through ``SageContext``.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Callable
from typing import Annotated

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from sage_agent.context import SageContext
from sage_agent.records import (
    Attempt,
    NodeTiming,
    PlanNote,
    StepDict,
    StepRecord,
    Task,
    TaskResult,
)


class SageInput(TypedDict, total=False):
    """What the graph takes: a task (GSM8K's shape), or a plain question."""

    task: Task
    question: str


class SageOutput(TypedDict, total=False):
    """What the graph gives back: the final answer, every step, and where to trace it."""

    answer: str | None
    records: list[StepRecord]
    result: TaskResult | None
    thread_id: str | None
    """The thread whose checkpoints hold the trace (None without a checkpointer)."""


class SageState(TypedDict, total=False):
    """Serialisable records only. ``records`` gets one entry per finished step."""

    task: Task
    question: str
    answer: str | None
    thread_id: str | None
    steps: list[StepDict]
    index: int
    """The step under way."""
    attempt: Attempt | None
    """The attempt under way (between route and trigger)."""
    attempts: list[Attempt]
    """The current step's attempts so far."""
    candidates: list[str | None]
    """Adapters left to retry the current step with, best first; ``BASE_MODEL`` (None):
    the base model, last, after a routed adapter answered past it."""
    records: Annotated[list[StepRecord], operator.add]
    store_calls: Annotated[list[AnyMessage], add_messages]
    """The LoRA Store's tool calls and results (its own key, so that the graph can be a
    subgraph of a state that has ``messages``)."""
    plan: PlanNote | None
    """The planner's adapter and a failed plan's fate (with an LLMDecomposer)."""
    timings: Annotated[list[NodeTiming], operator.add]
    """One entry per node run, in order: what the traces' timings are read from."""
    error: str | None
    result: TaskResult | None


BASE_MODEL = None
"""The candidate that retries a step with the base model."""

Ctx = Runtime[SageContext]
Node = Callable[[SageState, Ctx], SageState]


def timed(node: Node) -> Node:
    """The node, adding how long it ran to the state's ``timings`` (a node re-run after
    a crash records its second run only: the first never reached a checkpoint)."""

    @functools.wraps(node)
    def run(state: SageState, runtime: Ctx) -> SageState:
        started, clock = time.time(), time.perf_counter()
        update = node(state, runtime)
        step = None if node.__name__ in ("decompose", "finish") else state.get("index")
        timing: NodeTiming = {
            "node": node.__name__,
            "step": step,
            "started": started,
            "seconds": time.perf_counter() - clock,
        }
        return {**update, "timings": [timing]}

    return run
