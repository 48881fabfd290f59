"""SageAgent: the SAGE graph compiled on the project's database, and runs over task files.

Every task is a LangGraph thread checkpointed (langgraph-checkpoint-sqlite) in the same
SQLite file as the buffer and the store, so a run can be resumed and traced later. Which
threads make a run is kept by ``RunRegistry`` (``sage_agent.runs``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.embeddings import Embeddings
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from sage_agent.buffer import BufferConfig, TriggerBuffer
from sage_agent.chat import ChatSage
from sage_agent.checkpoints import checkpoint_history, prune_thread, sqlite_checkpointer
from sage_agent.context import SageContext, build_context
from sage_agent.database import LOCK_TIMEOUT, Heartbeat, this_owner
from sage_agent.errors import DatabaseLocked, DataError, InvalidInput
from sage_agent.graphs import SageState, build_sage_graph
from sage_agent.graphs.store_calls import adaptation_seconds
from sage_agent.records import SageEvent, Task, TaskResult
from sage_agent.runs import LEASE_BEAT, RunRegistry
from sage_agent.scoring.labels import label_metrics
from sage_agent.scoring.numeric import math_metrics
from sage_agent.scoring.trigger import Trigger
from sage_agent.store import LoRAStore, StoreConfig
from sage_agent.tasks.decompose import Decomposer, socratic_decomposer
from sage_agent.tasks.families import ARITHMETIC, family_named

if TYPE_CHECKING:
    from sage_agent.serving import VLLMEngine

Event = SageEvent
"""A custom stream event of the graph (``sage_agent.records.SageEvent``)."""


@dataclass
class RunSummary:
    """The figures of a run (the CLI's --json keys)."""

    run_id: str
    problems: int = 0
    steps: int = 0
    step_em: float = 0.0
    """Exact match of the steps' final answers (after retries)."""
    step_em_first: float = 0.0
    """Exact match of the first answers (before any retry)."""
    problem_em: float = 0.0
    mae: float | None = None
    mse: float | None = None
    ner: float = 0.0
    labels: dict[str, Any] | None = None
    """Steps of a family other than arithmetic: accuracy, macro precision / recall / F1
    and the confusion of labels (``scoring.labels.LabelMetrics``) of the final answers;
    its step_em is that accuracy."""
    triggers: int = 0
    """First answers the Trigger failed."""
    clusters: int = 0
    adapters_trained: int = 0
    retries: int = 0
    retry_success: int = 0
    """Failed steps that a retry with an adapter fixed."""
    routed: int = 0
    """Steps answered with a routed adapter on the first attempt."""
    adapt_s: float = 0.0
    """Seconds spent in the LoRA Store (searches, confirmation and saving)."""
    wall_s: float = 0.0
    threads: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: dict[str, str | None] = field(default_factory=dict)
    """Final answers of the problems given without one (plain questions), by task id."""


class SageQuestion(BaseModel):
    """The arguments of ``SageAgent.as_tool()``."""

    question: str = Field(min_length=1, description="The math question to solve.")


class SageAgent:
    """The SAGE graph with its runtime dependencies, compiled with a SqliteSaver on ``db``.

    ``model`` is a ChatSage or a model id / path (default: the embedded SmolLM2-135M).
    Adapters go to ``adapters`` (default: ``<db stem>-adapters/`` beside the database).
    ``engine`` (a vLLM server's URL, or a VLLMEngine) answers the steps, with the adapters
    registered with it; ``model`` then only trains.
    A finished thread keeps its last checkpoint and the history of the others, which are
    pruned; ``keep_checkpoints`` keeps them all (to replay a finished thread from any).
    """

    def __init__(
        self,
        db: str | Path = "sage.db",
        model: ChatSage | str | None = None,
        *,
        embeddings: Embeddings | None = None,
        decomposer: Decomposer = socratic_decomposer,
        trigger: Trigger | None = None,
        buffer_config: BufferConfig | None = None,
        store_config: StoreConfig | None = None,
        adapters: str | Path | None = None,
        substitute: Literal["answers", "references"] = "references",
        keep_checkpoints: bool = False,
        engine: str | VLLMEngine | None = None,
    ) -> None:
        self.db_path = Path(db).absolute()
        self.keep_checkpoints = keep_checkpoints
        self.runs = RunRegistry(self.db_path)
        self.db = self.runs.db
        self._base = build_context(
            self.db_path,
            model,
            embeddings=embeddings,
            trigger=trigger,
            buffer_config=buffer_config,
            store_config=store_config,
            adapters=adapters,
            decomposer=decomposer,
            substitute=substitute,
            engine=engine,
        )
        self.checkpointer = sqlite_checkpointer(self.db_path)
        self.graph = build_sage_graph().compile(checkpointer=self.checkpointer)

    @property
    def model(self) -> ChatSage:
        return self._base.model

    @property
    def trigger(self) -> Trigger:
        return self._base.trigger

    @property
    def buffer(self) -> TriggerBuffer:
        assert self._base.buffer is not None  # build_context always makes one
        return self._base.buffer

    @property
    def store(self) -> LoRAStore:
        assert self._base.store is not None  # build_context always makes one
        return self._base.store

    def configure(self, **changes: Any) -> None:
        """Change SageContext fields for every later run: ``decomposer``, ``substitute``,
        ``budget_seconds``, ``max_retries``, ``prompt``, ..."""
        self._base = replace(self._base, **changes)

    def context(self, *, train: bool = True, route: bool = True, **changes: Any) -> SageContext:
        """The graph's context: with ``train`` False failures are not buffered and nothing
        is trained; with ``route`` False every step is answered by the base model."""
        base = replace(self._base, buffer=self.buffer if train else None, train=train, route=route)
        return replace(base, **changes)

    # one task

    def solve(
        self,
        task: Task,
        *,
        thread_id: str | None = None,
        context: SageContext | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> TaskResult | None:
        """Run one task as a thread (resuming it if its checkpoint is unfinished) and
        return its final state's ``result`` (None when it ended without one)."""
        thread_id = thread_id or f"task-{uuid.uuid4().hex[:8]}"
        config = {"configurable": {"thread_id": thread_id}}
        values = self.graph.get_state(config).values
        # A finished thread has its result (finish always writes one). Its snapshot's
        # `next` is no test: after a kill, the last step's writes can be saved without
        # the checkpoint after them, and then `next` is empty in a thread half done.
        if values.get("result") is not None:
            return values["result"]
        graph_input = None if values else {"task": task}
        try:
            for chunk in self.graph.stream(
                graph_input, config, context=context or self.context(), stream_mode="custom"
            ):
                if on_event is not None:
                    on_event(chunk)
        except sqlite3.OperationalError as error:  # the checkpointer's own connection
            if "locked" not in str(error):
                raise
            raise DatabaseLocked(
                f"{self.db_path} stayed locked by another process for {LOCK_TIMEOUT:g} s; "
                f"thread {thread_id} resumes from its last checkpoint with --resume"
            ) from error
        return self.state(thread_id).get("result")

    # runs

    def run(
        self,
        tasks: Iterable[Task],
        *,
        train: bool = True,
        route: bool = True,
        options: dict[str, Any] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_task: Callable[[TaskResult | None], None] | None = None,
        run_id: str | None = None,
        stop_when: Callable[[RunSummary], bool] | None = None,
        take_over: bool = False,
        concurrency: int = 1,
    ) -> RunSummary:
        """Stream ``tasks`` through the graph, one thread each. With ``run_id`` of an
        unfinished run, its finished threads are skipped and the interrupted one resumes
        from its checkpoint; the run is leased to this thread while it runs (with a
        heartbeat), so a second resume of it is refused (RunError) unless ``take_over``.
        ``stop_when`` ends the run early once it returns True. Task ids must be unique
        (DataError). ``concurrency`` tasks run at once, each in a thread of its own (worth
        it with an ``engine``, which batches their answers; in process the model answers
        one at a time); the callbacks are then called from those threads, one at a time."""
        if concurrency < 1:
            raise InvalidInput(f"concurrency must be at least 1, not {concurrency}")
        tasks = list(tasks)
        _check_unique_ids(tasks)
        owner = this_owner()
        if run_id is None:
            run_id = uuid.uuid4().hex[:10]
            self.runs.start(run_id, "run" if train else "eval", options or {}, owner)
        else:
            self.runs.lease(run_id, owner, take_over=take_over)
        with Heartbeat(lambda: self.runs.beat(run_id, owner), LEASE_BEAT):
            return self._run(run_id, tasks, train, route, on_event, on_task, stop_when, concurrency)

    def _run(
        self,
        run_id: str,
        tasks: list[Task],
        train: bool,
        route: bool,
        on_event: Callable[[Event], None] | None,
        on_task: Callable[[TaskResult | None], None] | None,
        stop_when: Callable[[RunSummary], bool] | None,
        concurrency: int,
    ) -> RunSummary:
        started = time.perf_counter()
        context = self.context(train=train, route=route)
        if context.adaptation is not None:  # this run's own, resumed with what it spent
            states = [self.state(t["id"]) for t in self.threads(run_id)]
            spent = sum(adaptation_seconds(s) for s in states)
            planner = sum(adaptation_seconds(s, planner=True) for s in states)
            budget = replace(context.adaptation, spent=spent, planner_spent=planner)
            context = replace(context, adaptation=budget)
        callbacks = threading.Lock()  # the caller's callbacks run one at a time

        def event(chunk: Event) -> None:
            if on_event is not None:
                with callbacks:
                    on_event(chunk)

        def task_done(result: TaskResult | None) -> bool:
            """Report a finished task; True when the run should stop."""
            with callbacks:
                if on_task is not None:
                    on_task(result)
                return stop_when is not None and stop_when(self.summarize(run_id))

        def solve(position: int, task: Task) -> TaskResult | None:
            thread_id = f"{run_id}:{task['id']}"
            self.runs.start_thread(thread_id, run_id, task["id"], position)
            result = self.solve(task, thread_id=thread_id, context=context, on_event=event)
            self._finish_thread(thread_id, finished=result is not None)
            return result

        if concurrency == 1:
            for position, task in enumerate(tasks):
                if task_done(solve(position, task)):
                    break
        else:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="sage-run") as pool:
                futures = [pool.submit(solve, p, t) for p, t in enumerate(tasks)]
                try:
                    for future in as_completed(futures):
                        if task_done(future.result()):
                            break
                finally:  # stopping (or a failure): the tasks not started never start
                    for future in futures:
                        future.cancel()
        summary = self.summarize(run_id, wall_s=time.perf_counter() - started)
        self.runs.finish(run_id, summary.__dict__)
        return summary

    def _finish_thread(self, thread_id: str, *, finished: bool) -> None:
        """Record the thread as done; a finished one keeps its last checkpoint and the
        history of the others, which are pruned."""
        if not finished or self.keep_checkpoints or self.runs.kept_history(thread_id):
            self.runs.finish_thread(thread_id)
            return
        kept = [
            {k: v for k, v in point.items() if k != "values"}
            for point in checkpoint_history(self.graph, thread_id)
        ]
        self.runs.finish_thread(thread_id, history=kept)
        prune_thread(self.checkpointer, thread_id)

    def as_tool(self, name: str = "sage_solve", description: str | None = None) -> BaseTool:
        """The SAGE graph as a LangChain tool for a supervisor agent: a question in, the
        final answer out; the steps and the thread that traces them are the tool message's
        artifact. Each call is a run of its own in this agent's database. Plain questions
        need a decomposer that plans (``configure(decomposer=LLMDecomposer(model))``)."""

        def solve(question: str) -> tuple[str, dict[str, Any]]:
            summary = self.run([{"id": f"q-{uuid.uuid4().hex[:8]}", "question": question}])
            values = self.state(summary.threads[0])
            result = values.get("result") or {}
            if result.get("error"):
                raise ToolException(result["error"])
            artifact = {"thread_id": summary.threads[0], "records": values.get("records", [])}
            return str(result.get("answer")), artifact

        return StructuredTool.from_function(
            solve,
            name=name,
            description=description
            or "Solve a multi-step math question step by step with a self-adapting local "
            "model; returns the final answer.",
            args_schema=SageQuestion,
            response_format="content_and_artifact",
            handle_tool_error=True,
        )

    def unfinished_run(self) -> dict[str, Any] | None:
        """The latest run that did not finish (for --resume), or None."""
        return self.runs.unfinished()

    def summarize(self, run_id: str, *, wall_s: float | None = None) -> RunSummary:
        """The figures of a run, from its threads' final states."""
        summary = RunSummary(run_id)
        run = self.runs.get(run_id)
        finals, firsts, references, solved, problems = [], [], [], 0, 0
        judged: dict[str, tuple[list[str], list[str], list[bool]]] = {}
        for row in self.runs.threads(run_id, order_by="position"):
            values = self.state(row["id"])
            if not values.get("result"):
                continue
            summary.threads.append(row["id"])
            summary.adapt_s += adaptation_seconds(values)
            problems += 1
            solved += bool(values["result"].get("correct"))
            if values["result"].get("error"):
                summary.errors.append(f"{row['task_id']}: {values['result']['error']}")
            if values["result"].get("reference") is None:
                summary.answers[row["task_id"]] = values["result"].get("answer")
            for record in values.get("records") or []:
                attempts = record["attempts"]
                family = record.get("family", ARITHMETIC.name)
                if family == ARITHMETIC.name:
                    finals.append(record["answer"])
                    firsts.append(attempts[0]["answer"])
                    references.append(record["reference"])
                else:
                    answers, golds, first_passed = judged.setdefault(family, ([], [], []))
                    answers.append(record["answer"] or "")
                    golds.append(record["reference"] or "")
                    first_passed.append(record["first_passed"])
                summary.triggers += attempts[0]["failed"]
                summary.retries += record["retries"]
                summary.retry_success += record["retry_success"]
                summary.routed += bool(attempts[0]["routed"])
                summary.adapters_trained += sum(
                    len((a.get("training") or {}).get("adapters") or []) for a in attempts
                )
        metrics = math_metrics(finals, references) if finals else None
        first_metrics = math_metrics(firsts, references) if firsts else None
        summary.problems, summary.steps = problems, len(finals)
        summary.problem_em = solved / problems if problems else 0.0
        if metrics is not None and first_metrics is not None:
            summary.step_em, summary.step_em_first = metrics.em, first_metrics.em
            summary.mae, summary.mse, summary.ner = metrics.mae, metrics.mse, metrics.ner
        elif judged:  # a run of one family (the first one's, should a file mix them)
            family, (answers, golds, first_passed) = next(iter(judged.items()))
            labels = label_metrics(family_named(family), answers, golds)
            summary.labels, summary.steps = labels.as_dict(), len(answers)
            summary.step_em, summary.ner = labels.accuracy, labels.answered
            summary.step_em_first = sum(first_passed) / len(first_passed)
        summary.clusters = len(self.buffer.clusters(with_samples=False))
        if wall_s is not None:
            summary.wall_s = wall_s
        elif run.get("summary"):
            summary.wall_s = json.loads(run["summary"]).get("wall_s", 0.0)
        return summary

    # reading back

    def state(self, thread_id: str) -> SageState:
        """The latest state of a thread ({} when it has no checkpoint)."""
        return self.graph.get_state({"configurable": {"thread_id": thread_id}}).values or {}

    def threads(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return self.runs.threads(run_id)


def _check_unique_ids(tasks: list[Task]) -> None:
    seen: set[str] = set()
    for task in tasks:
        if task["id"] in seen:
            raise DataError(
                f"task id {task['id']!r} appears twice; every task of a run needs its own "
                "id (it names the task's thread)"
            )
        seen.add(task["id"])
