"""SageMiddleware: SAGE inside any ``langchain.agents.create_agent`` agent.

Around every model call it answers as the store's adaptation policy decides, the graph's
own rule (``sage_agent.store.policy``: a routed adapter answers when it routes all or the
base answer is unsure), scores the answer with the Trigger when a reference is known (a
callable of yours, or the arithmetic verifier on an expression in the prompt; a task
family or a checker of yours judges a label or a string), buffers
failures, and keeps one ``SageRecord`` per call in the agent's state. Training never runs
inside a model call: clusters that became ready during a turn are trained after it
(``after_agent``), or after an ``interrupt()`` that asks for approval when
``train="approve"``.

With a chat model other than the context's ChatSage, failures are recorded and buffered
but nothing is routed or trained (a warning says so, once).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import warnings
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
)
from langchain_core.messages import AIMessage, AnyMessage
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt
from typing_extensions import NotRequired, TypedDict

from sage_agent.buffer import default_tag, first_expression
from sage_agent.context import SageContext, current_thread_id
from sage_agent.errors import (
    ConfigError,
    ExpressionError,
    StoreError,
)
from sage_agent.records import Judge
from sage_agent.scoring.numeric import mean_margin
from sage_agent.scoring.verifier import arithmetic_verifier
from sage_agent.store import AdaptationPolicy, Route, needs_training, train_cluster
from sage_agent.tasks.families import TaskFamily, family_named

Reference = Callable[[ModelRequest, AIMessage], "str | None"]
"""The reference answer of a model call (a gold answer, a checked tool result), or None
when it is not known."""


class SageRecord(TypedDict):
    """What SAGE did around one model call."""

    prompt: str
    answer: str
    adapter: str | None
    """The adapter that answered; None for the base model."""
    reference: str | None
    failed: bool | None
    """None: no reference was known, so the answer was not scored."""
    anomaly_score: float | None
    cluster_id: int | None
    """The buffer cluster the failure joined, if any."""
    note: str | None


class TrainingOutcome(TypedDict):
    """A cluster trained after a turn."""

    cluster_id: int
    adapters: list[str]
    error: str | None


class SageAgentState(AgentState[Any]):
    """The agent's state with SAGE's records."""

    sage_records: NotRequired[Annotated[list[SageRecord], operator.add]]
    sage_ready: NotRequired[list[int]]
    """Clusters that became ready for training during this turn."""
    sage_trained: NotRequired[Annotated[list[TrainingOutcome], operator.add]]


def expression_reference(request: ModelRequest, _answer: AIMessage) -> str | None:
    """The value of the first arithmetic expression in the last user message, computed by
    the arithmetic verifier (None when there is none)."""
    expression = first_expression(_prompt(request.messages))
    if expression is None:
        return None
    try:
        return arithmetic_verifier(expression)
    except ExpressionError:
        return None


class SageMiddleware(AgentMiddleware[SageAgentState, Any, Any]):
    """SAGE around the model calls of a ``create_agent`` agent (see the module docstring).

    ``context`` is the SageContext of the project's database (``build_context(db,
    chat)``); give the agent that same ChatSage as its model. ``reference`` gives each
    call's reference answer (default: the arithmetic verifier on the prompt), a number,
    a label or a string; one that raises leaves the answer unscored, with a note and a
    warning. ``family`` (a ``sage_agent.tasks.families`` family or its name, such as
    "pubmedqa") judges the answer against it (a label is right when the answer names it
    first) and tags the failures with its name; ``judge(answer, reference)`` is a checker
    of your own, which decides instead. ``train``:
    "after_turn", "approve" (an ``interrupt()`` asks first; resume with
    ``Command(resume=True)``) or "never".
    """

    state_schema = SageAgentState

    def __init__(
        self,
        context: SageContext,
        *,
        reference: Reference = expression_reference,
        train: Literal["after_turn", "approve", "never"] = "after_turn",
        max_seconds: float | None = None,
        family: TaskFamily | str | None = None,
        judge: Judge | None = None,
    ) -> None:
        super().__init__()
        if train not in ("after_turn", "approve", "never"):
            raise ConfigError(f'train must be "after_turn", "approve" or "never", not {train!r}')
        self.context, self.reference, self.train = context, reference, train
        self.family = family_named(family) if isinstance(family, str) else family
        if self.family is not None and self.family.multi_step:
            self.family = None  # arithmetic: the operator signature tags, the numbers judge
        self.judge = judge or (self.family.judge if self.family is not None else None)
        self.max_seconds = max_seconds
        self._warned = False

    # around the model call

    @property
    def policy(self) -> AdaptationPolicy:
        return self.context.policy

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ExtendedModelResponse:
        route = self._route(request)
        base = handler(request) if self.policy.base_first(route) else None
        chosen = self.policy.choose(route, _message(base) if base is not None else None)
        note = None
        if chosen is not None:
            # Loaded and kept loaded while it answers: another turn cannot evict it.
            with self.policy.loaded(chosen) as (name, note):
                if name is not None:
                    answer = handler(self._with_adapter(request, name))
                    if self._stands(answer, base, route):
                        return self._scored(request, answer, chosen, None)
                    note = _surer_note(chosen)
        response = base if base is not None else handler(request)
        return self._scored(request, response, None, note)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ExtendedModelResponse:
        route = await asyncio.to_thread(self._route, request)
        base = await handler(request) if self.policy.base_first(route) else None
        chosen = self.policy.choose(route, _message(base) if base is not None else None)
        note = None
        if chosen is not None:
            with contextlib.ExitStack() as held:
                loading = self.policy.loaded(chosen)
                name, note = await asyncio.to_thread(held.enter_context, loading)
                if name is not None:
                    answer = await handler(self._with_adapter(request, name))
                    if self._stands(answer, base, route):
                        return await asyncio.to_thread(self._scored, request, answer, chosen, None)
                    note = _surer_note(chosen)
        response = base if base is not None else await handler(request)
        return await asyncio.to_thread(self._scored, request, response, None, note)

    def _stands(self, answer: ModelResponse, base: ModelResponse | None, route: Route) -> bool:
        """Whether the adapter's answer stands against the base model's (the contest)."""
        return self.policy.keeps(
            _message(answer), _message(base) if base is not None else None, route.tag
        )

    def _route(self, request: ModelRequest) -> Route:
        """The adapters routed to the prompt (none unless the agent's model is ours)."""
        prompt = _prompt(request.messages)
        if not prompt or not self._adapts(request.model):
            return Route()
        return self.policy.route(prompt, tag=self._tag(prompt), limit=1)

    def _tag(self, prompt: str) -> str:
        """The family's tag, else the operator signature of the prompt's expression."""
        return self.family.tag if self.family is not None else default_tag(prompt)

    def _scored(
        self,
        request: ModelRequest,
        response: ModelResponse,
        adapter: str | None,
        note: str | None,
    ) -> ExtendedModelResponse:
        message, prompt = _message(response), _prompt(request.messages)
        reference = None
        if message.tool_calls or not message.text.strip():
            # A step of the agent's loop, not an answer: the turn's answer comes later.
            note = "a tool call, not an answer; not scored"
        else:
            try:
                reference = self.reference(request, message)
            except Exception as error:  # the user's checker: its failure must not end the turn
                note = f"reference raised {type(error).__name__}: {error}; answer not scored"
                warnings.warn(f"SageMiddleware: {note}", stacklevel=2)
        record = SageRecord(
            prompt=prompt,
            answer=message.text,
            adapter=adapter,
            reference=reference,
            failed=None,
            anomaly_score=None,
            cluster_id=None,
            note=note,
        )
        ready = list(request.state.get("sage_ready") or [])
        if reference is not None and prompt:
            margin = mean_margin(message.response_metadata)
            result = self.context.trigger.score(
                message.text, reference, logits_margin=margin, judge=self.judge
            )
            record.update(failed=result.failed, anomaly_score=result.anomaly_score)
            ready += self._learn(request, record)
        update = {"sage_records": [record], "sage_ready": ready}
        return ExtendedModelResponse(model_response=response, command=Command(update=update))

    def _learn(self, request: ModelRequest, record: SageRecord) -> list[int]:
        """What the policy makes of the outcome: an adapter's use counted, a passing base
        answer kept as a canary, a failure buffered. Returns the failure's cluster when it
        is now ready for training."""
        prompt, tag = record["prompt"], self._tag(record["prompt"])
        # The canary's expression is the prompt's only when the reference was computed
        # from it (the default reference); a reference of the user's may not be.
        expression = first_expression(prompt) if self.reference is expression_reference else None
        observed = self.policy.observe(
            prompt,
            tag,
            adapter=record["adapter"],
            failed=bool(record["failed"]),
            reference=record["reference"],
            expression=expression,
        )
        if observed.note is not None:
            record["note"] = observed.note
        store, buffer = self.context.store, self.context.buffer
        if not observed.buffer or buffer is None:
            return []
        thread = current_thread_id()
        assignment = buffer.add(
            prompt,
            tag=tag,
            payload={
                "reference": record["reference"],
                "answer": record["answer"],
                "adapter": record["adapter"],
            },
            key=f"{thread}:{len(request.messages)}" if thread else None,
        )
        record["cluster_id"] = assignment.cluster_id
        if assignment.cluster_id is None or store is None or not self._adapts(request.model):
            return []
        cluster = buffer.cluster(assignment.cluster_id)
        return [cluster.id] if self.context.train and needs_training(cluster, store) else []

    def _with_adapter(self, request: ModelRequest, adapter: str) -> ModelRequest:
        """The request answered with ``adapter``: ChatSage's ``adapter=`` setting, or on
        a vLLM server the adapter's model name."""
        settings = self.context.answerer.call_settings(adapter)
        return request.override(model_settings={**request.model_settings, **settings})

    def _adapts(self, model: Any) -> bool:
        engine = self.context.engine
        if model is (engine.chat_model if engine is not None else self.context.model):
            return True
        if not self._warned:
            warnings.warn(
                f"SageMiddleware: the agent's model ({type(model).__name__}) is not the "
                "context's answering model (its ChatSage, or its engine's chat_model); "
                "failures are recorded, nothing is routed or trained",
                stacklevel=3,
            )
            self._warned = True
        return False

    # after the turn

    def after_agent(self, state: SageAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        ready = sorted(set(state.get("sage_ready") or []))
        if not ready or self.train == "never":
            return None
        if self.train == "approve" and not interrupt({"train_clusters": ready}):
            return {"sage_ready": []}
        return {"sage_ready": [], "sage_trained": [self._train(c) for c in ready]}

    async def aafter_agent(
        self, state: SageAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.after_agent, state, runtime)

    def _train(self, cluster_id: int) -> TrainingOutcome:
        store, buffer = self.context.store, self.context.buffer
        assert store is not None and buffer is not None  # only ready clusters come here
        try:
            _, kept = train_cluster(store, buffer, cluster_id, max_seconds=self.max_seconds)
        except (StoreError, MemoryError, OSError) as error:
            return TrainingOutcome(cluster_id=cluster_id, adapters=[], error=str(error))
        return TrainingOutcome(cluster_id=cluster_id, adapters=[a.id for a in kept], error=None)


def _prompt(messages: list[AnyMessage]) -> str:
    """The text of the last user message ("" when there is none)."""
    return next((m.text for m in reversed(messages) if m.type == "human"), "")


def _surer_note(adapter: str) -> str:
    return f"the base model is surer of its answer than adapter {adapter}'s; its answer kept"


def _message(response: ModelResponse) -> AIMessage:
    return next(m for m in reversed(response.result) if isinstance(m, AIMessage))
