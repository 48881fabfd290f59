"""What a trial is judged against and what became of it: the base model's figures on a
search's validation pairs and canaries (``Baseline``), and a trial's ``Verdict``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sage_agent.chat import ChatSage
from sage_agent.records import TrainingPair
from sage_agent.store.gate import expected_accuracy
from sage_agent.store.recipe import Recipe
from sage_agent.tasks.plans import PLAN_TAG

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Baseline:
    """The base model on a search's validation pairs and gate: what a trial must beat."""

    em: float
    """Generated validation exact match."""
    canaries: list[TrainingPair]
    """The gate's canaries (empty: no gate)."""
    canary_right: tuple[bool, ...]
    """Per canary: the base model's generated answer is right."""
    routed: tuple[int, ...]
    """The canaries whose base answer is unsure (``Router.unsure``): the only ones a
    routed adapter answers; the others keep the base model's answer."""
    val_right: tuple[bool, ...] = ()
    """Per validation pair: the base model's generated answer is right."""
    val_unsure: tuple[int, ...] = ()
    """The validation pairs whose base answer is unsure."""
    tag_accuracy: float = 0.0
    """The base model's share of right answers on the cluster's tag
    (``CanarySet.tag_accuracy``): how much its canaries weigh against its failures."""

    @property
    def canary_em(self) -> float | None:
        """The base model's generated exact match on the canaries (None: no gate)."""
        return sum(self.canary_right) / len(self.canary_right) if self.canaries else None

    def canary_em_as_routed(self, adapter_right: Sequence[bool]) -> float:
        """Canary exact match when the adapter answers the routed canaries
        (``adapter_right``, in ``routed`` order) and the base model the others."""
        return _em_as_routed(self.canary_right, dict(zip(self.routed, adapter_right, strict=True)))

    def val_em_as_routed(self, adapter_right: Sequence[bool]) -> float:
        """Validation exact match when the adapter (``adapter_right``, per pair) answers
        the pairs whose base answer is unsure and the base model the others."""
        return _em_as_routed(self.val_right, {i: adapter_right[i] for i in self.val_unsure})


def _em_as_routed(base_right: Sequence[bool], adapter_right: dict[int, bool]) -> float:
    """Exact match when the adapter answers the items in ``adapter_right`` (by index) and
    the base model the others."""
    right = [adapter_right.get(i, r) for i, r in enumerate(base_right)]
    return sum(right) / len(right)


@dataclass(frozen=True)
class Verdict:
    """What became of one trial: "kept", or why not, with the figures it was judged on."""

    outcome: str
    em: float
    """Validation exact match: generated where generation ran, else teacher-forced."""
    right: Sequence[bool]
    """Per validation pair, whether the trial answered it right (as ``em`` counts)."""
    canary_em: float | None = None
    generated_em: float | None = None
    agreement: float | None = None


@dataclass(frozen=True)
class ToReplace:
    """The lift over the base model a retrain's trial must reach to replace the cluster's
    adapters. A trial from peft's initialisation is held to their lift on their own
    validation split: the grown cluster's split may hold members they trained on, which
    would favour them. A trial that trained on from their weights (``init_from``) has seen
    those members too, so it is held to their lift on this search's split: the same pairs,
    without the noise of two small splits."""

    own_split: float = 0.0
    this_split: float = 0.0

    def lift(self, config: Any) -> float:
        """The bar for a trial of ``config`` (a ``LoRATrainConfig``)."""
        return self.this_split if config.init_from else self.own_split


def routes_all(
    chat: ChatSage,
    tag: str,
    adapter: str,
    recipe: Recipe,
    base: Baseline,
    right: Sequence[bool],
    canary_em: float | None,
) -> bool:
    """Whether the kept trial should answer every step routed to it rather than only
    those whose base answer is unsure: it loses none of the base model's right
    canaries when it answers them all (it already beats the base model on validation,
    or it would not be kept), or the tag's expected exact match
    (``expected_accuracy``) is higher that way. Both are judged on the canaries'
    teacher-forced lower bound, so routing all is chosen only when that bound wins.
    Where the base model's sure answers are mostly wrong (GSM8K's "-" and "/"), the
    confidence gate keeps them wrong; where they are mostly right ("*"), it is what
    saves them. A planner adapter gets every question anyway."""
    if tag == PLAN_TAG:
        return True
    p = base.tag_accuracy
    everything = range(len(base.canaries))
    on_canaries = recipe.gate_forced(chat, adapter, everything)
    all_canaries = sum(on_canaries) / len(on_canaries) if on_canaries else 1.0
    as_routed = expected_accuracy(
        p, 1.0 if canary_em is None else canary_em, base.val_em_as_routed(right)
    )
    routed_all = expected_accuracy(p, all_canaries, sum(right) / len(right))
    log.info(
        "tag %r (base accuracy %.2f): expected EM %.3f routing all, %.3f routing the unsure only",
        tag,
        p,
        routed_all,
        as_routed,
    )
    keeps_the_canaries = bool(on_canaries) and all_canaries >= (base.canary_em or 0.0)
    return keeps_the_canaries or routed_all > as_routed
