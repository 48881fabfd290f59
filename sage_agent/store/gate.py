"""The regression gate: canaries (steps the base model answers right) and what an adapter
may lose on them.

Canaries are kept per structure tag, since an adapter is routed to its tag's steps. A
tag's canaries are split, seeded, into two disjoint parts: the gate's (never trained on)
and rehearsal's (mixed into training so the adapter keeps what the base model knows).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from sage_agent.database import open_database, transaction
from sage_agent.errors import InvalidInput
from sage_agent.records import TrainingPair
from sage_agent.store.config import GateConfig

Canaries = list[tuple[TrainingPair, str | None]]
"""Canaries, each with its expression: rehearsal makes verifier-labelled variants of them,
and the recipe writes them in its answer format."""


class CanarySet:
    """The ``canary`` table of the project's database."""

    def __init__(self, db: str | Path, config: GateConfig, *, seed: int = 0, timeout: float = 10):
        self.config, self.seed = config, seed
        self.db = open_database(db, timeout=timeout)
        with transaction(self.db):
            self.db["canary"].create(
                {"prompt": str, "answer": str, "tag": str, "expression": str},
                pk="prompt",
                if_not_exists=True,
            )

    def add(
        self,
        pairs: Sequence[TrainingPair],
        tag: str | None = None,
        expressions: Sequence[str | None] | None = None,
    ) -> None:
        """Add steps the base model answers right, under their structure tag. A canary's
        ``expression`` (when its prompt contains it) lets rehearsal train on
        verifier-labelled variants of it."""
        expressions = expressions or [None] * len(pairs)
        if len(expressions) != len(pairs):
            raise InvalidInput(f"{len(pairs)} canaries but {len(expressions)} expressions")
        with transaction(self.db):
            self.db["canary"].insert_all(
                [
                    {"prompt": p.prompt, "answer": p.answer, "tag": tag, "expression": e}
                    for p, e in zip(pairs, expressions, strict=True)
                ],
                ignore=True,
            )

    def split(self, tag: str | None, *, rehearse: bool) -> tuple[Canaries, Canaries]:
        """The tag's canaries in two disjoint, seeded parts: the gate's (up to
        ``canary_size``) and, with ``rehearse``, rehearsal's (the rest, as many again at
        most). With rehearsal the gate takes half the canaries at most."""
        where, args = ("tag = ?", [tag]) if tag is not None else (None, [])
        rows = list(self.db["canary"].rows_where(where, args, order_by="prompt"))
        random.Random(self.seed).shuffle(rows)
        gate_size = self.config.canary_size
        if rehearse:
            gate_size = min(gate_size, math.ceil(len(rows) / 2))
        gate, rest = rows[:gate_size], rows[gate_size : gate_size + self.config.canary_size]
        return (
            [(TrainingPair(r["prompt"], r["answer"]), r["expression"]) for r in gate],
            [(TrainingPair(r["prompt"], r["answer"]), r["expression"]) for r in rest]
            if rehearse
            else [],
        )

    def count(self, tag: str | None = None) -> int:
        where, args = ("tag = ?", [tag]) if tag is not None else (None, [])
        return self.db["canary"].count_where(where, args)

    def margin(self, tag_accuracy: float, gain: float) -> float:
        """The canary exact match an adapter may lose: ``canary_margin`` when set, else
        what its validation ``gain`` pays for on a tag the base model answers right with
        ``tag_accuracy`` (``affordable_loss``)."""
        if self.config.canary_margin is not None:
            return self.config.canary_margin
        return affordable_loss(tag_accuracy, gain)

    def tag_accuracy(self, tag: str, failures: int) -> float:
        """The base model's accuracy on ``tag``, estimated as its canaries (steps it got
        right) over those and its ``failures`` on the tag. Counted over the stream, not
        over one cluster: a cluster holds only part of a tag's failures (the rest wait in
        the buffer or were left as noise), and the canaries are every pass of the tag."""
        passes = self.count(tag)
        return passes / (passes + failures) if passes + failures else 0.0


def expected_accuracy(base_accuracy: float, on_canaries: float, on_failures: float) -> float:
    """A tag's expected exact match when ``base_accuracy`` of its steps are like the
    canaries (answered right ``on_canaries`` of the time) and the rest like its failures."""
    return base_accuracy * on_canaries + (1 - base_accuracy) * on_failures


def affordable_loss(base_accuracy: float, gain: float) -> float:
    """The canary exact match an adapter may lose on a tag the base model answers right
    with ``base_accuracy``, given its exact-match ``gain`` on the tag's failures: the
    loss that keeps p * canary + (1 - p) * failures at or above the base model's p."""
    if base_accuracy <= 0:
        return math.inf
    return (1 - base_accuracy) / base_accuracy * gain
