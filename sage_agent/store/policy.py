"""The adaptation policy: when a routed adapter answers, and what an answer teaches the store.

One rule, used by the graph, the middleware, the route tool, the store's own evaluation of
a trial and the benchmarks:

- **decide**: a prompt is routed to the adapters of its nearest cluster (``route``). The
  best of them answers when it routes all (its gate expected more right answers that
  way), when the confidence gate is off (``RouterConfig.route_below`` None), or when the
  base model's own answer is unsure; otherwise the base model's answer is kept. So the
  base model answers first only where its answer can still decide (``base_first``).
  With the contest (``RouterConfig.contest``), the adapter's answer then stands only
  if the model is surer of it than of the base answer (``keeps``).
- **observe**: an adapter's answer counts toward its wins; a passing base answer becomes
  a canary of its tag (what an adapter must not break); a failed answer is to be
  buffered (``Observed.buffer``), which the caller does with its own payload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage

from sage_agent.errors import AdapterError, NotFoundError
from sage_agent.records import TrainingPair

if TYPE_CHECKING:
    from sage_agent.store.store import LoRAStore


@dataclass(frozen=True)
class Route:
    """The adapters routed to a prompt, best first (none: the base model answers)."""

    adapters: tuple[str, ...] = ()
    route_all: bool = False
    """The best adapter answers every prompt routed to it, sure base answers too."""
    tag: str | None = None
    """The tag of the step routed: its family says how sure a base answer is."""

    @property
    def adapter(self) -> str | None:
        return self.adapters[0] if self.adapters else None


@dataclass(frozen=True)
class Observed:
    """What an answer's outcome asks of the caller."""

    buffer: bool
    """A failed answer: add it to the Trigger Buffer."""
    note: str | None = None
    """Why the outcome could not be counted (the adapter was removed meanwhile)."""


class AdaptationPolicy:
    """The policy over ``store`` (None: nothing is routed, nothing learned but the
    failures to buffer). ``route`` False answers everything with the base model;
    ``learn`` False keeps no canaries (an evaluation)."""

    def __init__(self, store: LoRAStore | None, *, route: bool = True, learn: bool = True) -> None:
        self.store, self.routes, self.learns = store, route, learn

    # decide

    def route(
        self,
        prompt: str,
        tag: str | None = None,
        *,
        limit: int | None = None,
        nearest: bool = False,
    ) -> Route:
        """The adapters routed to ``prompt`` (at most ``limit``), best first; ``nearest``:
        the nearest cluster's, however far (a planner's one cluster)."""
        if not self.routes or self.store is None or not prompt:
            return Route()
        found = self.store.route(prompt, tag=tag, nearest=nearest)
        if not found:
            return Route()
        return Route(tuple(a.id for a in found[:limit]), found[0].route_all, tag)

    @property
    def gated(self) -> bool:
        """Whether the confidence gate is on: a sure base answer is kept."""
        return self.store is not None and self.store.config.router.route_below is not None

    @property
    def contested(self) -> bool:
        """Whether a routed adapter's answer must be surer than the base model's to
        replace it (``RouterConfig.contest``, with the gate on)."""
        return self.gated and self.store is not None and self.store.config.router.contest

    def base_first(self, route: Route) -> bool:
        """Whether the base model answers before the routed adapter: always when nothing is
        routed; with an adapter, when the gate or the contest can keep its answer."""
        return route.adapter is None or (self.gated and (not route.route_all or self.contested))

    def adapter_answers(
        self, route_all: bool, base: AIMessage | None, tag: str | None = None
    ) -> bool:
        """The rule itself: an adapter answers when it routes all, when the base model was
        not asked (``base_first`` was False), or when the base answer to a step of ``tag``
        is unsure."""
        return route_all or base is None or self.store is None or self.store.unsure(base, tag)

    def keeps(self, adapted: AIMessage, base: AIMessage | None, tag: str | None = None) -> bool:
        """Whether the adapter's answer stands against the base model's (``base`` None:
        the base model was not asked): without the contest always, with it when the
        model is surer of what the adapter's answer says."""
        if base is None or not self.contested:
            return True
        assert self.store is not None  # contested implies a store
        return self.store.surer(adapted, base, tag)

    def choose(self, route: Route, base: AIMessage | None) -> str | None:
        """The adapter that answers (not yet loaded), or None to keep the base answer."""
        if route.adapter is None or not self.adapter_answers(route.route_all, base, route.tag):
            return None
        return route.adapter

    @contextlib.contextmanager
    def loaded(self, adapter_id: str) -> Iterator[tuple[str | None, str | None]]:
        """(the name the adapter is loaded under, None), kept loaded while the block
        answers with it (another thread's load cannot evict it meanwhile); or (None, why
        not) when it cannot be loaded (corrupt, removed): the base model answers then."""
        assert self.store is not None  # only a routed adapter is loaded
        with contextlib.ExitStack() as held:
            try:
                name = held.enter_context(self.store.pinned(adapter_id))
            except (AdapterError, NotFoundError) as error:
                yield None, f"adapter {adapter_id} not used: {error}"
                return
            yield name, None

    # observe

    def observe(
        self,
        prompt: str,
        tag: str | None,
        *,
        adapter: str | None,
        failed: bool,
        reference: str | None,
        expression: str | None = None,
    ) -> Observed:
        """Count an adapter's answer, or keep a passing base answer as a canary; a failed
        answer, base or adapter's, is to be buffered (an adapter that fails its cluster's
        steps is what a retrain is for)."""
        if adapter is not None and self.store is not None:
            try:
                self.store.record_use(adapter, won=not failed)
            except NotFoundError:  # removed since it answered (adapters rm, eviction)
                return Observed(failed, f"adapter {adapter} was removed after answering")
        elif not failed and self.learns and self.store is not None:
            self.store.add_canary(
                [TrainingPair(prompt, reference or "")], tag, expressions=[expression]
            )
        return Observed(buffer=failed)

    def answered_by_adapter(
        self, route_all: bool, base: Sequence[AIMessage], tag: str | None = None
    ) -> list[int]:
        """Which of these base answers to steps of ``tag`` an adapter would take over (by
        index): how a trial is evaluated as routing will use it."""
        return [
            i for i, message in enumerate(base) if self.adapter_answers(route_all, message, tag)
        ]
