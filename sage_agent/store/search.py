"""Cluster-aware LoRA Optimisation's search (paper Algorithm 2) with successive halving:
n random configurations, then the neighbourhood (rank and learning rate) of the top k,
inside a trial and a time budget.

Each group of candidates runs as a successive-halving bracket (Jamieson and Talwalkar,
2016; Hyperband's inner loop): every candidate trains the first rung's share of its
training, the better half of those at a rung train on to the next, and so on to the whole
training. Trials are ranked teacher-forced (``Recipe.rank``: validation exact match, then
validation loss, from one forward pass); the store generates only to confirm the trials
it keeps. Written here rather than with Optuna's pruners because a rung is not a
restarted trial: each trial's optimiser state lives on in its ``LoRARun`` and the
promoted ones continue where they stopped, on the one shared base model.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from sage_agent.chat import ChatSage
from sage_agent.errors import AdapterError, StoreError
from sage_agent.records import StoreEvent, TrialDone, TrialFailed, TrialStarted
from sage_agent.store.config import SearchConfig
from sage_agent.store.pace import affordable_samples, bracket_seconds, expected_seconds, rung_steps
from sage_agent.store.recipe import Recipe
from sage_agent.tasks.families.base import RuleTraining
from sage_agent.training.trainer import FrozenPrefix, LoRARun, LoRATrainConfig

log = logging.getLogger(__name__)

Emit = Callable[[StoreEvent], None]


@dataclass
class Trial:
    """A configuration in training; its adapter stays loaded in the chat model as
    ``name`` until the search's caller deletes it."""

    number: int
    config: LoRATrainConfig
    name: str
    rung: int = -1
    """The last rung it was trained to and ranked at (-1: none yet)."""
    val_em: float = 0.0
    """Teacher-forced validation exact match at that rung."""
    val_loss: float = math.inf
    exact: tuple[bool, ...] = ()
    """Per validation pair, whether greedy decoding writes its answer (teacher-forced)."""
    seconds: float = 0.0
    """Of training; with ``validation_seconds``, what the search's budget counts."""
    samples: int = 0
    """Training samples seen so far (pairs times epochs trained)."""
    validation_seconds: float = 0.0
    evaluations: int = 0
    curve: tuple[float, ...] = ()
    """Training loss per optimiser step."""
    run: LoRARun | None = field(default=None, repr=False, compare=False)


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
    earlier: Sequence[Mapping[str, Any]] = (),
    leader_samples: int = 0,
) -> tuple[list[Trial], list[FailedTrial]]:
    """Train and rank configurations until the trial or time budget is spent; returns
    the trials run, best first (at least one: the first always runs), and the failed
    ones. A trial that runs out of memory is dropped, reported as a ``trial_failed``
    event, and the search goes on; StoreError if every trial fails. ``rng`` draws the
    configurations; every trial trains with ``train_seed``. ``earlier``: the best
    configurations of earlier searches on the same tag (``first_bracket``).
    ``leader_samples``: the samples the leader trains on to at the least, past the
    budget if need be (``family_search``)."""
    search = Search(model, recipe, config, cluster_id, max_seconds, emit, leader_samples)
    description = f"LoRA search, cluster {cluster_id}"
    with tqdm(total=config.max_trials, desc=description, unit="trial", leave=False) as bar:
        search.bracket(first_bracket(config, earlier, rng, seed=train_seed), bar)
        search.bracket(search.neighbourhood(), bar)
        if config.train_leader_on:
            search.train_leader_on()
    if search.failed and not search.trials:
        raise StoreError(f"every trial failed: {'; '.join(f.error for f in search.failed)}")
    for trial in search.trials:
        trial.run = None  # the optimiser state is not needed any more; the adapter stays
    return sorted(search.trials, key=ranking), search.failed


class Search:
    """One search's trials under way: successive-halving brackets inside a time budget."""

    def __init__(
        self,
        model: ChatSage,
        recipe: Recipe,
        config: SearchConfig,
        cluster_id: int,
        max_seconds: float,
        emit: Emit,
        leader_samples: int = 0,
    ) -> None:
        self.model, self.recipe, self.config = model, recipe, config
        self.cluster_id, self.max_seconds, self.emit = cluster_id, max_seconds, emit
        self.leader_samples = leader_samples
        self.started = time.perf_counter()
        self.run_id = uuid.uuid4().hex[:8]
        # Trials on the last N layers share the frozen layers' output (computed once).
        self.prefix = FrozenPrefix(model, recipe.train, config.batch_size)
        self.layers = model.hf_model.config.num_hidden_layers
        self.trials: list[Trial] = []
        self.failed: list[FailedTrial] = []

    def left(self) -> float:
        return self.max_seconds - (time.perf_counter() - self.started)

    def affordable(self, candidate: LoRATrainConfig, samples: int) -> bool:
        if not self.trials and not self.failed:
            return True  # the first trial always runs
        return expected_seconds(self.trials, candidate, samples, self.layers) <= self.left()

    def neighbourhood(self) -> list[LoRATrainConfig]:
        """The untried neighbours of the ``top_k`` best trials so far."""
        seen = {_key(t.config) for t in self.trials}
        around = []
        for leader in sorted(self.trials, key=ranking)[: self.config.top_k]:
            for neighbour in neighbours(self.config, leader.config):
                if _key(neighbour) not in seen:
                    seen.add(_key(neighbour))
                    around.append(neighbour)
        return around

    def bracket(self, candidates: Sequence[LoRATrainConfig], bar: tqdm) -> None:
        """Start the candidates the budget affords, then promote the better half of each
        rung to the next while the budget lasts."""
        config = self.config
        # The trial budget: what is left of max_trials is all a bracket may start.
        candidates = candidates[: max(0, config.max_trials - len(self.trials) - len(self.failed))]
        live: list[Trial] = []
        for candidate in candidates:
            if len(live) >= self.bracket_size(candidate, len(candidates), len(live)):
                break
            trial = self.start(candidate, bar)
            if trial is not None:
                live.append(trial)
        for rung in range(1, len(config.rungs)):
            live = sorted(live, key=ranking)[: math.ceil(len(live) / 2)]
            promoted = []
            for trial in live:
                run = trial.run
                assert run is not None
                more = rung_steps(config.rungs[rung], len(run.batches)) - len(run.losses)
                more_samples = round(more * run.samples / len(run.losses))
                if self.affordable(trial.config, more_samples) and self.train_to(trial, rung):
                    promoted.append(trial)
            live = promoted

    def bracket_size(self, candidate: LoRATrainConfig, offered: int, begun: int) -> int:
        """How many of ``offered`` candidates like ``candidate`` the bracket can start
        (``begun`` of them already ranked at the first rung) and still promote its better
        half to the second rung inside the budget left: at least ``begun``. (A bracket
        that promotes none is a random search at the first rung's share of training; one
        sized to finish every rung affords a single configuration in a 120 s search.)"""
        if not self.config.sized_brackets or not any(t.samples for t in self.trials):
            return offered  # nothing has run yet to say; the first trial always runs
        left = self.left()
        fitting = [
            size
            for size in range(max(begun, 1), offered + 1)
            if bracket_seconds(
                self.trials,
                candidate,
                size=size,
                begun=begun,
                train_size=len(self.recipe.train),
                rungs=self.config.rungs[:2],
                layers=self.layers,
            )
            <= left
        ]
        return max(fitting, default=begun)

    def start(self, candidate: LoRATrainConfig, bar: tqdm) -> Trial | None:
        """A new trial trained to the first rung, or None when the budget does not afford
        it or it failed."""
        first_samples = self.config.rungs[0] * candidate.epochs * len(self.recipe.train)
        if not self.affordable(candidate, round(first_samples)):
            return None
        number = len(self.trials) + len(self.failed) + 1
        trial = Trial(number, candidate, f"trial-{self.run_id}-{number}")
        self.trials.append(trial)
        self.emit(
            TrialStarted(
                event="trial_started",
                trial=trial.number,
                of=self.config.max_trials,
                cluster_id=self.cluster_id,
                config=config_dict(candidate),
            )
        )
        try:
            trial.run = LoRARun(self.model, trial.name, self.recipe.train, candidate, self.prefix)
        except (MemoryError, OSError, AdapterError) as error:
            # AdapterError: the adapter it was to start from is gone or corrupt.
            self.drop(trial, f"{type(error).__name__}: {error}")
            return None
        if not self.train_to(trial, 0):
            return None
        bar.update(1)
        bar.set_postfix(best_em=max(t.val_em for t in self.trials))
        return trial

    def train_to(self, trial: Trial, rung: int) -> bool:
        """Train ``trial`` to ``rung`` and rank it there; False when it failed."""
        assert trial.run is not None
        steps = rung_steps(self.config.rungs[rung], len(trial.run.batches))
        return self.train_steps(trial, steps - len(trial.run.losses))

    def train_steps(self, trial: Trial, steps: int) -> bool:
        """Train ``trial`` ``steps`` more optimiser steps and rank it; False when it
        failed. Its rung is the last whose steps it has trained."""
        run = trial.run
        assert run is not None
        try:
            result = run.train(steps)
            trained = time.perf_counter()
            scores = self.recipe.rank(self.model, trial.name)
        except (MemoryError, OSError) as error:
            # Out of memory (or a failing device) in one configuration: drop the trial,
            # keep searching; a smaller rank may still fit.
            self.drop(trial, f"{type(error).__name__}: {error}")
            return False
        rung = max(
            r
            for r, share in enumerate(self.config.rungs)
            if rung_steps(share, len(run.batches)) <= len(run.losses)
        )
        trial.rung, trial.val_em, trial.val_loss, trial.exact = (
            rung,
            scores.exact_match,
            scores.loss,
            scores.exact,
        )
        trial.seconds, trial.curve, trial.samples = result.seconds, result.losses, run.samples
        trial.validation_seconds += time.perf_counter() - trained
        trial.evaluations += 1
        self.emit(
            TrialDone(
                event="trial_done",
                trial=trial.number,
                rung=rung,
                cluster_id=self.cluster_id,
                val_em=trial.val_em,
                val_loss=trial.val_loss,
                seconds=result.seconds,
            )
        )
        return True

    def train_leader_on(self) -> None:
        """Train the best trial on with the seconds the brackets left, as many optimiser
        steps as the pace so far says fit (at most to the end of its training), and rank
        it again; its weights and ranking go back if it ranks worse. Without this, a
        budget that affords one trial's first rung keeps an adapter trained an eighth of
        its way (a Dyck search on a CPU without bf16: 6 of 48 steps, the rest unspent).
        The leader trains on to ``leader_samples`` at the least, whatever the seconds."""
        leader = min(self.trials, key=ranking, default=None)
        run = leader.run if leader is not None else None
        if leader is None or run is None or run.done:
            return
        samples_per_step = run.samples / len(run.losses)
        samples = affordable_samples(self.trials, leader.config, self.left(), self.layers)
        samples = max(samples, self.leader_samples - run.samples)
        steps = min(len(run.batches) - len(run.losses), int(samples / samples_per_step))
        if steps < 1:
            return
        before = (leader.rung, leader.val_em, leader.val_loss, leader.exact)
        weights = [param.detach().clone() for param in run.trainable]
        if not self.train_steps(leader, steps):
            return
        if ranking(leader) > (-before[1], before[2]):
            with torch.no_grad():
                for param, saved in zip(run.trainable, weights, strict=True):
                    param.copy_(saved)
            leader.rung, leader.val_em, leader.val_loss, leader.exact = before

    def drop(self, trial: Trial, error: str) -> None:
        self.trials.remove(trial)
        if trial.name in self.model.adapters:
            self.model.delete_adapter(trial.name)
        self.failed.append(FailedTrial(trial.number, trial.config, error))
        log.warning("cluster %s, trial %s failed: %s", self.cluster_id, trial.number, error)
        self.emit(TrialFailed(event="trial_failed", trial=trial.number, error=error))


@dataclass(frozen=True)
class FailedTrial:
    """A configuration whose training or validation failed (out of memory, an I/O error)."""

    number: int
    config: LoRATrainConfig
    error: str


def family_search(
    config: SearchConfig, rule: RuleTraining | None, train_size: int
) -> tuple[SearchConfig, int]:
    """The search of a cluster whose family learns its rule as ``rule`` says, on
    ``train_size`` training pairs: at the rule's batch size, with enough epochs for its
    samples, and the samples its leader trains on to (``run_search``'s
    ``leader_samples``). ``config`` and 0 where there is no rule or
    ``config.family_rules`` is off."""
    if rule is None or not config.family_rules or train_size < 1:
        return config, 0
    fewest = math.ceil(rule.samples / train_size)
    epochs = tuple(sorted({max(e, fewest) for e in config.epochs}))
    return replace(config, batch_size=rule.batch_size, epochs=epochs), rule.samples


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


def first_bracket(
    config: SearchConfig,
    earlier: Sequence[Mapping[str, Any]],
    rng: random.Random,
    *,
    seed: int,
) -> list[LoRATrainConfig]:
    """The search's first candidates: ``n_random`` random configurations, or, when
    earlier searches on the tag kept adapters, their configurations (the ``top_k`` best,
    as this search space trains them) and their neighbourhood first, as the paper
    searches around the previous best: a retrain spends its seconds training what worked
    rather than ranking random configurations again. An earlier configuration that
    carries its adapter's folder (``init_from``) trains on from that adapter's weights."""
    start, seen = [], set()
    for found in earlier[: config.top_k]:
        reused = reuse_config(config, found, seed=seed)
        for candidate in (reused, *neighbours(config, reused)):
            if _key(candidate) not in seen:
                seen.add(_key(candidate))
                start.append(candidate)
    while len(start) < config.n_random:
        start.append(sample_config(config, rng, seed=seed))
    return start


def reuse_config(config: SearchConfig, found: Mapping[str, Any], *, seed: int) -> LoRATrainConfig:
    """An earlier search's configuration (``config_dict``) as this search trains: its
    rank, alpha, learning rate, dropout and layers, with this search's batch size,
    epochs (its own where this space has them) and seed; ``found["init_from"]``, the
    earlier adapter's folder, makes it train on from that adapter's weights."""
    epochs = found.get("epochs")
    return LoRATrainConfig(
        rank=int(found["rank"]),
        alpha=float(found["alpha"]),
        learning_rate=float(found["learning_rate"]),
        dropout=float(found.get("dropout", 0.0)),
        epochs=epochs if epochs in config.epochs else config.epochs[0],
        last_layers=found.get("last_layers"),
        batch_size=config.batch_size,
        seed=seed,
        init_from=found.get("init_from"),
    )


def neighbours(config: SearchConfig, around: LoRATrainConfig) -> list[LoRATrainConfig]:
    """The next smaller and larger rank of the search space (alpha scaled along, from
    peft's initialisation: another rank cannot start from ``around``'s weights), then
    half and double the learning rate (within its range)."""
    ranks = sorted(config.ranks)
    position = ranks.index(around.rank) if around.rank in ranks else 0
    low, high = config.learning_rates
    found = []
    for step in (-1, 1):
        if 0 <= position + step < len(ranks):
            rank = ranks[position + step]
            alpha = around.alpha * rank / around.rank
            found.append(_replace(around, rank=rank, alpha=alpha, init_from=None))
    for factor in (0.5, 2.0):
        rate = around.learning_rate * factor
        if low <= rate <= high:
            found.append(_replace(around, learning_rate=rate))
    return found


def ranking(trial: Trial) -> tuple[float, float]:
    """Best first: higher validation exact match, then lower validation loss. Each trial
    is ranked as its adapter stands now, whatever rung it reached: more training is not
    always better (on the demo's cluster a promoted trial fell from 53% to 40%)."""
    return (-trial.val_em, trial.val_loss)


def config_dict(config: LoRATrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data["target_modules"] = list(data["target_modules"])
    return data


def _replace(config: LoRATrainConfig, **changes: Any) -> LoRATrainConfig:
    return LoRATrainConfig(**{**asdict(config), **changes})


def _key(config: LoRATrainConfig) -> str:
    """Equal for equal configurations (the neighbourhoods of two leaders overlap)."""
    return repr(sorted(config_dict(config).items()))
