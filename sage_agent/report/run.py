"""A run read back for its report: the figures, the stream of steps, where the time
went, and the database's clusters, searches and adapters."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sage_agent.agent import RunSummary, SageAgent
from sage_agent.buffer import Cluster, FailurePoint
from sage_agent.errors import NotFoundError
from sage_agent.store import AdapterRecord, TrialRecord
from sage_agent.tasks.families import question_of

PHASES = {
    "route": "answering",
    "answer": "answering",
    "trigger": "scoring",
    "buffer": "clustering",
    "lora_store": "training",
}
"""What each node's seconds count as; the other nodes are bookkeeping."""


@dataclass
class StreamStep:
    """A finished step, in the order the run answered it."""

    thread: str
    step: int
    """1-based, within its thread."""
    tag: str
    first_passed: bool
    passed: bool
    routed: bool
    """Its first answer came from a routed adapter."""
    anomaly_score: float | None


@dataclass
class ThreadRow:
    thread: str
    task: str | None
    question: str | None
    correct: bool | None
    steps: int
    steps_passed: int
    seconds: float
    finished: bool


@dataclass
class Search:
    """One LoRA search: a cluster's version and its trials, in the order they ran."""

    cluster_id: int
    cluster_version: int
    trials: list[TrialRecord]

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)


@dataclass
class RunReport:
    run_id: str
    mode: str
    options: dict[str, Any]
    started: float
    finished: float | None
    summary: RunSummary
    threads: list[ThreadRow]
    stream: list[StreamStep]
    phases: dict[str, float]
    """Seconds per phase (answering, scoring, clustering, training, bookkeeping)."""
    threshold: float
    clusters: list[Cluster]
    points: list[FailurePoint]
    searches: list[Search]
    adapters: list[AdapterRecord]

    @property
    def routed_em(self) -> float | None:
        routed = [s.first_passed for s in self.stream if s.routed]
        return sum(routed) / len(routed) if routed else None

    @property
    def routed_steps(self) -> int:
        return sum(s.routed for s in self.stream)


def latest_run(agent: SageAgent) -> str:
    row = next(agent.db["runs"].rows_where(order_by="started desc", limit=1), None)
    if row is None:
        raise NotFoundError(f"{agent.db_path} holds no runs yet; run sage-agent run first")
    return row["id"]


def read_run(agent: SageAgent, run_id: str) -> RunReport:
    """Everything the run report shows, read from the database and the checkpoints."""
    run = next(agent.db["runs"].rows_where("id = ?", [run_id]), None)
    if run is None:
        raise NotFoundError(f"no run {run_id!r} in {agent.db_path}")
    threads, stream, phases = [], [], defaultdict(float)
    for row in agent.threads(run_id):
        values = agent.state(row["id"])
        if not values:
            continue
        result = values.get("result") or {}
        timings = values.get("timings") or []
        for timing in timings:
            phases[PHASES.get(timing["node"], "bookkeeping")] += timing["seconds"]
        records = values.get("records") or []
        threads.append(
            ThreadRow(
                thread=row["id"],
                task=row["task_id"],
                question=question_of(values.get("task") or {}),
                correct=result.get("correct"),
                steps=len(records),
                steps_passed=sum(r["passed"] for r in records),
                seconds=sum(t["seconds"] for t in timings),
                finished=bool(result),
            )
        )
        for record in records:
            first = record["attempts"][0]
            stream.append(
                StreamStep(
                    thread=row["id"],
                    step=record["index"] + 1,
                    tag=record["tag"],
                    first_passed=record["first_passed"],
                    passed=record["passed"],
                    routed=bool(first["routed"]),
                    anomaly_score=first.get("anomaly_score"),
                )
            )
    searches: dict[tuple[int, int], list[TrialRecord]] = defaultdict(list)
    for trial in agent.store.registry.trials():
        searches[(trial.cluster_id, trial.cluster_version)].append(trial)
    return RunReport(
        run_id=run_id,
        mode=run["mode"],
        options=json.loads(run["options"] or "{}"),
        started=run["started"],
        finished=run["finished"],
        summary=agent.summarize(run_id),
        threads=threads,
        stream=stream,
        phases=dict(phases),
        threshold=agent.trigger.config.threshold,
        clusters=agent.buffer.clusters(with_samples=True),
        points=agent.buffer.points(),
        searches=[Search(c, v, trials) for (c, v), trials in searches.items()],
        adapters=agent.store.adapters(status=None),
    )
