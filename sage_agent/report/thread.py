"""A thread read back from its checkpoints: one row per attempt with the seconds each
node took, the node path, and every checkpoint (LangGraph's ``get_state_history``)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from sage_agent.agent import SageAgent
from sage_agent.checkpoints import checkpoint_history
from sage_agent.errors import NotFoundError
from sage_agent.records import Attempt, NodeTiming, PlanNote, StepRecord, TaskResult
from sage_agent.tasks.families import question_of

METRICS = ("lm", "bleu", "rouge_l", "cosine")


@dataclass
class AttemptRow:
    """One answer to a step, as the trace shows it."""

    step: int
    """1-based."""
    node: str
    """answer or retry."""
    question: str
    prompt: str
    answer: str | None
    reference: str | None
    metrics: dict[str, float | None]
    anomaly_score: float | None
    failed: bool | None
    cluster: int | None
    buffer: str | None
    adapter: str | None
    trained: list[str] | None
    outcome: str
    note: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per node of this attempt (route, answer, trigger, buffer, lora_store, ...)."""


@dataclass
class Checkpoint:
    """One checkpoint of the thread, oldest first: what ran, what it changed."""

    step: int
    """LangGraph's superstep number (-1: the input)."""
    checkpoint_id: str
    created: str
    ran: list[str]
    """The nodes whose writes this checkpoint holds."""
    next: list[str]
    changed: list[str]
    """The state keys whose values differ from the checkpoint before."""
    values: dict[str, Any] | None = None
    """The whole state; None for a checkpoint a finished thread no longer keeps (its
    history keeps what ran and what changed)."""


@dataclass
class ThreadTrace:
    thread: str
    run_id: str | None
    task: str | None
    question: str | None
    result: TaskResult | None
    error: str | None
    pending: list[str]
    """The nodes that would run next: not empty for an unfinished thread."""
    path: list[str]
    """Every node run, in order."""
    rows: list[AttemptRow]
    timings: list[NodeTiming]
    checkpoints: list[Checkpoint]
    plan: PlanNote | None = None
    """The planner's adapter and a failed plan's fate (with an LLMDecomposer)."""
    family: str | None = None
    """The task family that judged the thread's answers (``sage_agent.tasks.families``)."""

    @property
    def seconds(self) -> float:
        return sum(t["seconds"] for t in self.timings)


def latest_thread(agent: SageAgent) -> str:
    """The most recent thread that has a checkpoint (a run registers a thread just
    before its first checkpoint is written)."""
    for thread in reversed(agent.threads()):
        if agent.state(thread["id"]):
            return thread["id"]
    raise NotFoundError(f"{agent.db_path} holds no threads yet; run a task first")


def read_thread(agent: SageAgent, thread_id: str) -> ThreadTrace:
    """A thread as typed records: task, result, path, one row per attempt, checkpoints."""
    config = {"configurable": {"thread_id": thread_id}}
    snapshot = agent.graph.get_state(config)
    if not snapshot.values:
        raise NotFoundError(f"no thread {thread_id!r} in {agent.db_path}")
    row = next(agent.db["threads"].rows_where("id = ?", [thread_id]), None)
    checkpoints = _kept_history(agent, thread_id, row) or history(agent, thread_id)
    values = snapshot.values
    timings = list(values.get("timings") or [])
    task = values.get("task") or {}
    return ThreadTrace(
        thread=thread_id,
        run_id=row["run_id"] if row else None,
        task=task.get("id"),
        question=question_of(task),
        result=values.get("result"),
        error=values.get("error"),
        pending=list(snapshot.next),
        path=[node for past in checkpoints for node in past.next if node != "__start__"],
        rows=_rows(values.get("records") or [], timings),
        timings=timings,
        checkpoints=checkpoints,
        plan=values.get("plan"),
        family=task.get("family"),
    )


def history(agent: SageAgent, thread_id: str) -> list[Checkpoint]:
    """Every checkpoint the thread's checkpointer holds, oldest first, with its state."""
    return [Checkpoint(**point) for point in checkpoint_history(agent.graph, thread_id)]


def _kept_history(agent: SageAgent, thread_id: str, row: dict[str, Any] | None) -> list[Checkpoint]:
    """The history a finished thread keeps after its checkpoints were pruned (``row``: its
    row of ``threads``), with the state of the one checkpoint left ([] when not pruned)."""
    if not row or not row.get("history"):
        return []
    kept = {c.checkpoint_id: c.values for c in history(agent, thread_id)}
    return [
        Checkpoint(**{**entry, "values": kept.get(entry["checkpoint_id"])})
        for entry in json.loads(row["history"])
    ]


def _rows(records: list[StepRecord], timings: list[NodeTiming]) -> list[AttemptRow]:
    seconds = _seconds_per_attempt(timings)
    rows = []
    for record in records:
        for attempt in record["attempts"]:
            metrics = attempt.get("metrics") or {}
            buffered = attempt.get("buffer") or {}
            training = attempt.get("training") or {}
            rows.append(
                AttemptRow(
                    step=record["index"] + 1,
                    node=attempt["kind"],
                    question=record["question"],
                    prompt=attempt["prompt"],
                    answer=attempt.get("answer"),
                    reference=attempt["reference"],
                    metrics={name: metrics.get(name) for name in METRICS},
                    anomaly_score=attempt.get("anomaly_score"),
                    failed=attempt.get("failed"),
                    cluster=buffered.get("cluster_id"),
                    buffer=buffered.get("status"),
                    adapter=attempt.get("adapter"),
                    trained=training.get("adapters"),
                    outcome=_outcome(attempt),
                    note=attempt.get("note"),
                    seconds=seconds.get((record["index"], attempt["number"]), {}),
                )
            )
    return rows


def _seconds_per_attempt(timings: list[NodeTiming]) -> dict[tuple[int, int], dict[str, float]]:
    """Seconds per node, keyed by (step index, attempt number): a step's attempts are
    its runs of ``route``, each followed by the nodes up to the next one."""
    found: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    attempt: dict[int, int] = defaultdict(int)
    for timing in timings:
        step = timing["step"]
        if step is None:
            continue
        if timing["node"] == "route":
            attempt[step] += 1
        key = (step, max(attempt[step], 1))
        found[key][timing["node"]] = found[key].get(timing["node"], 0.0) + timing["seconds"]
    return found


def _outcome(attempt: Attempt) -> str:
    if attempt.get("failed") is None:
        return "-"
    if not attempt["failed"]:
        if attempt["kind"] == "answer":
            return "pass"
        return "retry fixed it" if attempt["adapter"] is not None else "base model's answer kept"
    return "fail" if attempt["kind"] == "answer" else "retry failed"


def render_table(trace: ThreadTrace) -> str:
    """The thread for a terminal: a header, a row per attempt, the result."""
    columns = ("step", "node", "prompt", "answer", "reference", *METRICS, "anomaly_score")
    columns += ("cluster", "adapter", "outcome", "seconds")
    table = []
    for row in trace.rows:
        cells = {**row.__dict__, **row.metrics, "seconds": sum(row.seconds.values()) or None}
        table.append([_short(cells[c]) for c in columns])
    result = trace.result or {}
    head = (
        f"thread {trace.thread}  task {trace.task}\n{trace.question}\n"
        f"nodes: {' -> '.join(trace.path)}\n"
    )
    tail = (
        f"\nfinal answer {result.get('answer')!r}, reference {result.get('reference')!r}, "
        f"correct: {result.get('correct')}; {trace.seconds:.1f} s in the graph's nodes"
    )
    if trace.error:
        tail += f"\nerror: {trace.error}"
    if trace.pending:
        tail += f"\nunfinished: next {trace.pending} (resume with sage-agent run --resume)"
    return head + tabulate(table, headers=columns, floatfmt=".3g") + tail


def _short(value: Any, width: int = 40) -> Any:
    if isinstance(value, str):
        value = value.replace("\n", " ")
        return value if len(value) <= width else value[: width - 1] + "…"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return value
