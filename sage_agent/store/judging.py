"""What a trial is judged against and what became of it: the base model's figures on a
search's validation pairs and canaries (``Baseline``), and a trial's ``Verdict``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sage_agent.records import TrainingPair


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
