"""The records that cross module boundaries, typed.

The SAGE graph keeps only plain, serialisable values in its state (so every checkpoint
reads back as a trace): a task, its steps, one ``Attempt`` per answer, one ``StepRecord``
per finished step, one ``NodeTiming`` per node run and a ``TaskResult``. The graph writes
them, and ``SageAgent``, the reports and the demo read them; declaring them here keeps
the keys in one place.
``TrainingPair`` is what the trainer, the recipe and the gate exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict


@dataclass(frozen=True)
class TrainingPair:
    """A prompt as the user would send it, and the answer the model should give."""

    prompt: str
    answer: str


Judge = Callable[[str, str], bool]
"""(the model's answer, the reference) -> whether the answer is right."""


class Task(TypedDict):
    """One line of a task file; other keys (a PubMedQA record's, a BIG-Bench Hard
    "input" and "target") are kept as they are."""

    id: str
    question: NotRequired[str]
    answer: NotRequired[str]
    """GSM8K's worked solution with its "#### <final answer>" line, when known."""
    family: NotRequired[str]
    """The task family that reads and judges it (``sage_agent.tasks.families``)."""


class StepDict(TypedDict):
    """An ``AtomicStep`` as the graph state holds it (``AtomicStep.to_dict()``)."""

    id: str
    task_id: str
    index: int
    question: str
    expression: str | None
    reference: str | None
    tag: str
    depends_on: list[int]
    family: NotRequired[str]


class BufferNote(TypedDict):
    """Where the Trigger Buffer put a failed first answer."""

    status: Literal["assigned", "buffered", "clustered", "noise"]
    sample_id: int
    cluster_id: int | None
    gamma: float | None


class TrainingNote(TypedDict):
    """What the LoRA Store tool reported after training the failure's cluster."""

    status: str
    """The tool message's status: "success" or "error"."""
    summary: str
    adapters: list[str]
    val_em: list[float]
    base_val_em: float | None
    seconds: NotRequired[float | None]
    """Wall seconds of the call (the search, confirmation and saving)."""


class Attempt(TypedDict):
    """One answer to a step: prepared by ``route``, answered, then scored by ``trigger``."""

    number: int
    kind: Literal["answer", "retry"]
    prompt: str
    expression: str | None
    reference: str | None
    adapter: str | None
    """The adapter that answered; None for the base model."""
    routed: bool
    """A first attempt sent to a routed adapter (the base model was unsure, or the
    adapter answers every step routed to it)."""
    route_all: NotRequired[bool]
    """The routed adapter answers sure base answers too (``AdapterRecord.route_all``)."""
    note: str | None
    base_answer: NotRequired[str]
    """The base model's unsure answer, when the attempt was routed past it."""
    adapter_answer: NotRequired[str]
    """The routed adapter's answer, when the base model's stood against it (the model
    was surer of the base answer: ``RouterConfig.contest``)."""
    answer: NotRequired[str]
    logits_margin: NotRequired[float | None]
    anomaly_score: NotRequired[float]
    failed: NotRequired[bool]
    metrics: NotRequired[dict[str, Any]]
    mode: NotRequired[Literal["reference", "confidence"]]
    numeric_match: NotRequired[bool | None]
    buffer: NotRequired[BufferNote]
    training: NotRequired[TrainingNote]


class StepRecord(StepDict):
    """A finished step: the step itself, its attempts and how it ended."""

    attempts: list[Attempt]
    answer: str
    passed: bool
    first_passed: bool
    retries: int
    retry_success: bool
    """It failed first and a retry with an adapter fixed it."""
    adapter: str | None


class PlanNote(TypedDict):
    """How a planner (``LLMDecomposer``) planned the task, and what became of a bad plan."""

    adapter: str | None
    """The planner adapter routed to, or None for the base model."""
    failure: NotRequired[str]
    """Why the plan counts as failed: it did not parse, or its result is not the task's."""
    buffer: NotRequired[BufferNote]
    training: NotRequired[TrainingNote]


class NodeTiming(TypedDict):
    """How long one run of a graph node took (the graph's ``timings`` key)."""

    node: str
    step: int | None
    """The step under way (0-based), or None for decompose and finish."""
    started: float
    """Wall-clock start, seconds since the epoch."""
    seconds: float


class TaskResult(TypedDict):
    """The end of a thread: the final answer against the task's, when it has one."""

    task: str | None
    answer: str | None
    reference: str | None
    correct: bool | None
    steps: int
    steps_passed: int
    error: str | None


# Stream events: what the graph's nodes and the LoRA Store write to LangGraph's custom
# stream (``stream_mode="custom"``), one TypedDict per kind, told apart by ``event``.


class Decomposed(TypedDict):
    event: Literal["decomposed"]
    task: str | None
    steps: int


class DecomposeFailed(TypedDict):
    event: Literal["decompose_failed"]
    task: str | None
    error: str


class StepStarted(TypedDict):
    event: Literal["step_started"]
    step: str
    question: str
    prompt: str


class Answered(TypedDict):
    event: Literal["answered"]
    answer: str
    adapter: str | None


class Triggered(TypedDict):
    event: Literal["triggered"]
    anomaly_score: float
    failed: bool
    attempt: int


class Buffered(BufferNote):
    event: Literal["buffered"]
    tag: str


class Training(TypedDict):
    """A cluster is ready: the LoRA Store tool is called for it."""

    event: Literal["training"]
    cluster_id: int
    budget_seconds: float | None


class Attached(TypedDict):
    event: Literal["attached"]
    adapters: list[str]
    summary: str


class Retry(TypedDict):
    event: Literal["retry"]
    adapter: str | None
    """None: the base model answers last, every routed adapter's answer having failed."""
    left: int


class StepDone(TypedDict):
    event: Literal["step_done"]
    step: str
    passed: bool
    retries: int


class Finished(TaskResult):
    event: Literal["finished"]


class TrialStarted(TypedDict):
    event: Literal["trial_started"]
    trial: int
    of: int
    cluster_id: int
    config: dict[str, Any]


class TrialDone(TypedDict):
    event: Literal["trial_done"]
    trial: int
    rung: int
    cluster_id: int
    val_em: float
    val_loss: float
    seconds: float


class TrialFailed(TypedDict):
    event: Literal["trial_failed"]
    trial: int
    error: str


class AdapterKept(TypedDict):
    event: Literal["adapter_kept"]
    cluster_id: int
    adapter: str
    val_em: float


StoreEvent = TrialStarted | TrialDone | TrialFailed | AdapterKept
"""What a LoRA Store search reports as it goes."""

SageEvent = (
    Decomposed
    | DecomposeFailed
    | StepStarted
    | Answered
    | Triggered
    | Buffered
    | Training
    | Attached
    | Retry
    | StepDone
    | Finished
    | StoreEvent
)
"""Every custom stream event of the SAGE graph."""
