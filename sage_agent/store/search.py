"""Cluster-aware LoRA Optimisation's search (paper Algorithm 2): n random configurations,
then the neighbourhood (rank and learning rate) of the top k, inside a trial and a time
budget. Every trial is ranked by validation exact match, then validation loss.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from sage_agent.chat import ChatSage
from sage_agent.errors import StoreError
from sage_agent.store.config import SearchConfig
from sage_agent.store.recipe import Recipe
from sage_agent.trainer import FrozenPrefix, LoRATrainConfig, train_lora

log = logging.getLogger(__name__)

StoreEvent = dict[str, Any]
"""A progress event: {"event": "trial_started" | "trial_done" | "trial_failed" |
"adapter_kept", ...}."""

Emit = Callable[[StoreEvent], None]


@dataclass
class Trial:
    """A trained configuration; its adapter stays loaded in the chat model as ``name``
    until the search's caller deletes it."""

    number: int
    config: LoRATrainConfig
    name: str
    val_em: float = 0.0
    val_loss: float = math.inf
    seconds: float = 0.0
    """Of training; with ``validation_seconds``, what the search's budget counts."""
    validation_seconds: float = 0.0
    curve: tuple[float, ...] = ()
    """Training loss per optimiser step."""


def run_search(
    model: ChatSage,
    recipe: Recipe,
    config: SearchConfig,
    *,
    rng: random.Random,
    train_seed: int,
    cluster_id: int,
    max_seconds: float,
    emit: Emit,
) -> tuple[list[Trial], list[FailedTrial]]:
    """Train and validate configurations until the trial or time budget is spent;
    returns the trials run (at least one: the first always runs) and the failed ones. A
    trial that runs out of memory is dropped, reported as a ``trial_failed`` event, and
    the search goes on; StoreError if every trial fails. ``rng`` draws the configurations;
    every trial trains with ``train_seed``."""
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    # Trials on the last N layers share the frozen layers' output (computed once).
    prefix = FrozenPrefix(model, recipe.train, config.batch_size)
    layers = model.hf_model.config.num_hidden_layers
    trials: list[Trial] = []
    failed: list[FailedTrial] = []

    def run(candidate: LoRATrainConfig, bar: tqdm) -> None:
        if len(trials) + len(failed) >= config.max_trials:
            return
        if time.perf_counter() - started + expected_seconds(trials, candidate, layers) > (
            max_seconds
        ):
            return
        number = len(trials) + len(failed) + 1
        trial = Trial(number, candidate, f"trial-{run_id}-{number}")
        trials.append(trial)
        emit(
            {
                "event": "trial_started",
                "trial": trial.number,
                "of": config.max_trials,
                "cluster_id": cluster_id,
                "config": config_dict(candidate),
            }
        )
        try:
            result = train_lora(model, trial.name, recipe.train, candidate, prefix=prefix)
            trained = time.perf_counter()
            scores = recipe.evaluate(model, trial.name, recipe.validation)
        except (MemoryError, OSError) as error:
            # Out of memory (or a failing device) in one configuration: drop the trial,
            # keep searching; a smaller rank may still fit.
            trials.remove(trial)
            if trial.name in model.adapters:
                model.delete_adapter(trial.name)
            failed.append(FailedTrial(trial.number, candidate, f"{type(error).__name__}: {error}"))
            log.warning("cluster %s, trial %s failed: %s", cluster_id, number, failed[-1].error)
            emit({"event": "trial_failed", "trial": number, "error": failed[-1].error})
            return
        trial.val_em, trial.val_loss = scores.exact_match, scores.loss
        trial.seconds, trial.curve = result.seconds, result.losses
        trial.validation_seconds = time.perf_counter() - trained
        emit(
            {
                "event": "trial_done",
                "trial": trial.number,
                "cluster_id": cluster_id,
                "val_em": trial.val_em,
                "val_loss": trial.val_loss,
                "seconds": result.seconds,
            }
        )
        bar.update(1)
        bar.set_postfix(best_em=max(t.val_em for t in trials))

    description = f"LoRA search, cluster {cluster_id}"
    with tqdm(total=config.max_trials, desc=description, unit="trial", leave=False) as bar:
        for _ in range(config.n_random):
            run(sample_config(config, rng, seed=train_seed), bar)
        for leader in sorted(trials, key=ranking)[: config.top_k]:
            for neighbour in neighbours(config, leader.config):
                run(neighbour, bar)
    if failed and not trials:
        raise StoreError(f"every trial failed: {'; '.join(f.error for f in failed)}")
    return trials, failed


@dataclass(frozen=True)
class FailedTrial:
    """A configuration whose training or validation failed (out of memory, an I/O error)."""

    number: int
    config: LoRATrainConfig
    error: str


def sample_config(config: SearchConfig, rng: random.Random, *, seed: int) -> LoRATrainConfig:
    """A random configuration of the search space (learning rate log-uniform)."""
    rank = rng.choice(config.ranks)
    low, high = config.learning_rates
    return LoRATrainConfig(
        rank=rank,
        alpha=rank * rng.choice(config.alpha_ratios),
        learning_rate=math.exp(rng.uniform(math.log(low), math.log(high))),
        dropout=rng.choice(config.dropouts),
        epochs=rng.choice(config.epochs),
        last_layers=rng.choice(config.last_layers),
        batch_size=config.batch_size,
        seed=seed,
    )


def neighbours(config: SearchConfig, around: LoRATrainConfig) -> list[LoRATrainConfig]:
    """The next smaller and larger rank of the search space (alpha scaled along), then
    half and double the learning rate (within its range)."""
    ranks = sorted(config.ranks)
    position = ranks.index(around.rank) if around.rank in ranks else 0
    low, high = config.learning_rates
    found = []
    for step in (-1, 1):
        if 0 <= position + step < len(ranks):
            rank = ranks[position + step]
            found.append(_replace(around, rank=rank, alpha=around.alpha * rank / around.rank))
    for factor in (0.5, 2.0):
        rate = around.learning_rate * factor
        if low <= rate <= high:
            found.append(_replace(around, learning_rate=rate))
    return found


def expected_seconds(trials: Sequence[Trial], config: LoRATrainConfig, layers: int) -> float:
    """How long a trial of ``config`` should take, from the trials so far: training time
    scales with epochs and with the share of layers trained, validation time does not.
    0 before the first trial, which always runs."""
    if not trials:
        return 0.0

    def work(c: LoRATrainConfig) -> float:
        return c.epochs * (layers - c.first_layer(layers)) / layers

    per_work = sum(t.seconds / work(t.config) for t in trials) / len(trials)
    validation = sum(t.validation_seconds for t in trials) / len(trials)
    return per_work * work(config) + validation


def ranking(trial: Trial) -> tuple[float, float]:
    """Best first: higher validation exact match, then lower validation loss."""
    return (-trial.val_em, trial.val_loss)


def config_dict(config: LoRATrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data["target_modules"] = list(data["target_modules"])
    return data


def _replace(config: LoRATrainConfig, **changes: Any) -> LoRATrainConfig:
    return LoRATrainConfig(**{**asdict(config), **changes})
