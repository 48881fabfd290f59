"""What a search can afford: the pace of its trials so far (seconds per training sample,
seconds per ranking) and what a candidate, a bracket or more training would cost at it.
Trials are read through ``Paced``, so that this arithmetic does not depend on the search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from sage_agent.training.trainer import LoRATrainConfig


class Paced(Protocol):
    """What a trial says of its pace (``search.Trial`` has it)."""

    config: LoRATrainConfig
    seconds: float
    samples: int
    validation_seconds: float
    evaluations: int


def rung_steps(share: float, total: int) -> int:
    """Optimiser steps of a rung that trains ``share`` of ``total`` steps (at least one)."""
    return max(1, min(total, round(share * total)))


def expected_seconds(
    trials: Sequence[Paced], config: LoRATrainConfig, samples: int, layers: int
) -> float:
    """How long training ``config`` on ``samples`` more samples and ranking it should
    take, from the trials so far: training time scales with the samples and with the
    share of layers trained, ranking time does not. 0 before the first trial, which
    always runs."""
    found = _pace(trials, layers)
    if found is None:
        return 0.0
    per_sample, ranking_seconds = found
    return per_sample * samples * _layer_share(config, layers) + ranking_seconds


def affordable_samples(
    trials: Sequence[Paced], config: LoRATrainConfig, seconds: float, layers: int
) -> float:
    """How many more samples ``config`` can train and still be ranked within ``seconds``,
    at the pace of the trials so far (``expected_seconds`` solved for the samples); 0
    before any trial has run."""
    found = _pace(trials, layers)
    if found is None:
        return 0.0
    per_sample, ranking_seconds = found
    return max(0.0, (seconds - ranking_seconds) / (per_sample * _layer_share(config, layers)))


def _pace(trials: Sequence[Paced], layers: int) -> tuple[float, float] | None:
    """(seconds per sample on all layers, seconds per ranking) of the trials so far."""
    ran = [t for t in trials if t.samples]
    if not ran:
        return None
    trained = sum(t.samples * _layer_share(t.config, layers) for t in ran)
    per_sample = sum(t.seconds for t in ran) / trained
    ranking_seconds = sum(t.validation_seconds for t in ran) / sum(t.evaluations for t in ran)
    return per_sample, ranking_seconds


def _layer_share(config: LoRATrainConfig, layers: int) -> float:
    return (layers - config.first_layer(layers)) / layers


def bracket_seconds(
    trials: Sequence[Paced],
    candidate: LoRATrainConfig,
    *,
    size: int,
    begun: int,
    train_size: int,
    rungs: Sequence[float],
    layers: int,
) -> float:
    """Expected seconds to finish a successive-halving bracket of ``size`` candidates
    like ``candidate``, ``begun`` of which are already trained and ranked at the first
    rung: each rung trains and ranks the better half of the rung before it."""
    total_steps = candidate.epochs * math.ceil(train_size / candidate.batch_size)
    samples_per_step = candidate.epochs * train_size / total_steps
    seconds, count, trained = 0.0, size, 0
    for rung, share in enumerate(rungs):
        steps = rung_steps(share, total_steps)
        more = round((steps - trained) * samples_per_step)
        runs = count - begun if rung == 0 else count
        seconds += runs * expected_seconds(trials, candidate, more, layers)
        trained, count = steps, math.ceil(count / 2)
    return seconds
