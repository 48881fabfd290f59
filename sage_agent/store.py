"""LoRA Store: Cluster-aware LoRA Optimisation (paper Algorithm 2) and the adapter pool.

``optimize(cluster)`` splits the cluster's samples into train and validation, trains n
random configurations from the search space on the one base model, ranks them by
validation exact match then validation loss, searches the neighbourhood (rank and
learning rate) of the top k, ranks everything again and keeps the best three that pass
the regression gate. Kept adapters are written in peft's format to a temporary folder,
renamed into ``root/<adapter id>/`` and only then registered in SQLite with a checksum of
their weights; every trial is logged in the ``trials`` table whether kept or not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from tqdm.auto import tqdm

from sage_agent.augment import ANSWER_FORMATS, AnswerFormat, augment_pairs
from sage_agent.buffer import Cluster
from sage_agent.chat_model import ChatSage
from sage_agent.database import open_database, transaction
from sage_agent.embeddings import LazyEmbeddings
from sage_agent.numeric import number_logprob
from sage_agent.trainer import (
    FrozenPrefix,
    LoRATrainConfig,
    TrainingPair,
    evaluate,
    save_adapter,
    train_lora,
)

log = logging.getLogger(__name__)

StoreEvent = dict[str, Any]
"""A progress event: {"event": "trial_started" | "trial_done" | ..., ...}."""


class StoreError(RuntimeError):
    """optimize() cannot run on this input; the message says why."""


class CorruptAdapter(RuntimeError):
    """An adapter's files do not match their checksum; it is marked broken, never loaded."""


@dataclass
class StoreConfig:
    """Search space, budgets and pool limits of the LoRA Store."""

    ranks: tuple[int, ...] = field(default=(8, 16, 32), metadata={"help": "LoRA ranks."})
    alpha_ratios: tuple[float, ...] = field(
        default=(1.0, 2.0), metadata={"help": "alpha = ratio * rank."}
    )
    learning_rates: tuple[float, float] = field(
        default=(5e-4, 2e-3), metadata={"help": "Learning-rate range, sampled log-uniformly."}
    )
    dropouts: tuple[float, ...] = field(default=(0.0, 0.05), metadata={"help": "LoRA dropouts."})
    epochs: tuple[int, ...] = field(default=(3,), metadata={"help": "Epoch counts."})
    last_layers: tuple[int | None, ...] = field(
        default=(None,),
        metadata={
            "help": "Target layers: None for all, N for the last N (faster: the frozen "
            "layers run once per search, see trainer.FrozenPrefix)."
        },
    )
    n_random: int = field(default=4, metadata={"help": "n: random configurations first."})
    top_k: int = field(
        default=2, metadata={"help": "k: configurations whose neighbourhood is searched."}
    )
    keep: int = field(default=3, metadata={"help": "Adapters kept per cluster."})
    max_trials: int = field(default=8, metadata={"help": "Trial budget of one optimize()."})
    max_seconds: float = field(
        default=900.0,
        metadata={
            "help": "Time budget of one optimize(): a trial starts only if the trials so "
            "far say it ends inside the budget (the first trial always runs)."
        },
    )
    min_samples: int = field(default=12, metadata={"help": "Smallest cluster to train on."})
    train_size: int = field(
        default=256,
        metadata={
            "help": "Training pairs per search: the cluster's training split topped up to "
            "this many with verifier-labelled variants of its samples (same expression "
            "shape, new numbers; see sage_agent.augment). 0: the cluster's samples alone."
        },
    )
    val_variants: int = field(
        default=4,
        metadata={"help": "Verifier-labelled variants per held-out sample, validation only."},
    )
    answer_format: str = field(
        default="equation",
        metadata={
            "help": "How training answers are written: 'equation' repeats the expression "
            "before the result ('60 + 17 = 77', as SmolLM2 answers on its own), 'number' "
            "gives the result alone. On 48 GSM8K '+' failures, 'equation' reached 48% "
            "validation EM where 'number' reached 38% (base 15%)."
        },
    )
    failure_repeats: int = field(
        default=2,
        metadata={
            "help": "Times each of the cluster's own training failures appears in the "
            "training pairs (its variants appear once): the failures are what a retry asks."
        },
    )
    replay_fraction: float = field(
        default=0.35,
        metadata={
            "help": "Share of the training pairs given to rehearsal: canaries of the "
            "cluster's tag that the gate does not use, and verifier-labelled variants of "
            "them. It keeps the adapter answering what the base model already got right. "
            "0: the cluster's failures and their variants only, and every canary gates."
        },
    )
    validation_fraction: float = field(
        default=0.25, metadata={"help": "Share of a cluster's samples held out for ranking."}
    )
    canary_margin: float | None = field(
        default=None,
        metadata={
            "help": "An adapter losing more canary exact match than this is discarded. "
            "None: the loss its gain pays for. An adapter is routed to its tag's steps; "
            "with p the tag's base accuracy (its canaries over canaries plus the cluster's "
            "failures) and g its validation EM gain on the failures, a canary loss up to "
            "(1 - p) / p * g leaves the tag's expected accuracy p * c + (1 - p) * v no "
            "lower than the base model's. A number sets a fixed margin (0.05: keep only "
            "adapters that break almost nothing)."
        },
    )
    canary_size: int = field(
        default=48, metadata={"help": "Canaries an adapter is checked on (a seeded sample)."}
    )
    max_on_disk: int = field(default=50, metadata={"help": "N: adapters kept on disk."})
    max_loaded: int = field(default=4, metadata={"help": "M: adapters loaded in memory (LRU)."})
    route_threshold: float = field(
        default=0.6, metadata={"help": "Routing needs centroid cosine at least this."}
    )
    route_below: float | None = field(
        default=-1.0,
        metadata={
            "help": "Route a first attempt only when the base model is unsure: the "
            "log-probability of the number in its answer is below this (or it gave no "
            "number). A sure base answer is kept, so adapters are not handed the steps the "
            "base model already gets right. On GSM8K steps, -1.0 sends 61-70% of the base "
            "model's wrong answers and 20% of its right ones to adapters. None: route every "
            "step."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of the split and the search."})
    lock_timeout: float = field(default=10.0, metadata={"help": "Database lock timeout (s)."})

    def __post_init__(self) -> None:
        for name in ("ranks", "alpha_ratios", "dropouts", "epochs", "last_layers"):
            if not getattr(self, name):
                raise ValueError(f"search space {name} is empty")
        low, high = self.learning_rates
        if not 0 < low <= high:
            raise ValueError(f"learning_rates must satisfy 0 < low <= high: {self.learning_rates}")
        if any(r < 1 for r in self.ranks) or any(e < 1 for e in self.epochs):
            raise ValueError("ranks and epochs must be at least 1")
        if any(not 0 <= d < 1 for d in self.dropouts) or any(a <= 0 for a in self.alpha_ratios):
            raise ValueError("dropouts must lie in [0, 1) and alpha_ratios be positive")
        if any(n is not None and n < 1 for n in self.last_layers):
            raise ValueError("last_layers entries must be None or at least 1")
        if min(self.n_random, self.top_k, self.keep, self.max_trials) < 1:
            raise ValueError("n_random, top_k, keep and max_trials must be at least 1")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1): {self.validation_fraction}")
        if self.train_size < 0 or self.val_variants < 0:
            raise ValueError("train_size and val_variants must be non-negative")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"answer_format must be one of {sorted(ANSWER_FORMATS)}, not {self.answer_format!r}"
            )
        if self.failure_repeats < 1 or not 0 <= self.replay_fraction < 1:
            raise ValueError(
                "failure_repeats must be at least 1 and replay_fraction lie in [0, 1): "
                f"{self.failure_repeats}, {self.replay_fraction}"
            )
        if self.canary_margin is not None and self.canary_margin < 0:
            raise ValueError(f"canary_margin must be None or >= 0, not {self.canary_margin}")
        if self.min_samples < 4:
            raise ValueError(f"min_samples must be at least 4, not {self.min_samples}")
        if self.max_loaded < 1 or self.max_on_disk < self.keep:
            raise ValueError("max_loaded must be at least 1 and max_on_disk at least keep")


@dataclass(frozen=True)
class AdapterRecord:
    """A registered adapter (a row of the ``adapters`` table)."""

    id: str
    cluster_id: int
    tag: str
    rank: int
    """Its place among its cluster's adapters: 1 is the best."""
    config: dict[str, Any]
    val_em: float
    val_loss: float
    base_val_em: float
    canary_em: float | None
    train_seconds: float
    samples: int
    path: str
    checksum: str
    status: str
    created: float
    last_used: float | None
    uses: int
    wins: int


@dataclass
class _Trial:
    number: int
    config: LoRATrainConfig
    name: str
    val_em: float = 0.0
    val_loss: float = math.inf
    seconds: float = 0.0
    """Of training; with ``validation_seconds``, what the search's budget counts."""
    validation_seconds: float = 0.0


class LoRAStore(LazyEmbeddings):
    """The LoRA Store over the project's SQLite file and an adapter folder ``root``.

    ``canary`` pairs are steps the base model answers right; an adapter whose exact match
    on them falls more than ``canary_margin`` (by default derived from the tag's base
    accuracy, see ``affordable_loss``) below the base model's is discarded (this
    keeps the paper's "preserve accuracy" requirement). Add them with ``add_canary``.
    """

    def __init__(
        self,
        db: str | Path,
        root: str | Path,
        model: ChatSage,
        config: StoreConfig | None = None,
        embeddings: Embeddings | None = None,
    ) -> None:
        self.config = config or StoreConfig()
        self.db = open_database(db, timeout=self.config.lock_timeout)
        self.root = Path(root)
        self.model = model
        self._embeddings = embeddings
        self._loaded: OrderedDict[str, None] = OrderedDict()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StoreError(f"adapter folder {self.root} is not writable: {error}") from error
        self._ensure_tables()

    # CLO

    def optimize(
        self,
        cluster: Cluster,
        *,
        max_seconds: float | None = None,
        progress: Callable[[StoreEvent], None] | None = None,
    ) -> list[AdapterRecord]:
        """Run Cluster-aware LoRA Optimisation on ``cluster``; returns the kept adapters,
        best first (empty when none beat the base model and passed the gate)."""
        budget = self.config.max_seconds if max_seconds is None else max_seconds
        if budget <= 0:
            raise StoreError(f"time budget must be positive, not {budget}")
        canary, replay = self._canaries(cluster.tag)
        train, val = self._split(cluster, replay, canary)
        emit = progress or (lambda _event: None)
        started = time.perf_counter()
        base = evaluate(self.model, None, val)
        base_canary = evaluate(self.model, None, canary).exact_match if canary else None
        rng = random.Random(f"{self.config.seed}:{cluster.id}:{cluster.version}")
        run_id = uuid.uuid4().hex[:8]
        # Trials on the last N layers share the frozen layers' output (computed once).
        prefix = FrozenPrefix(self.model, train, self.config.batch_size)
        trials: list[_Trial] = []
        layers = self.model.hf_model.config.num_hidden_layers

        def run(config: LoRATrainConfig, bar: tqdm) -> None:
            if len(trials) >= self.config.max_trials:
                return
            expected = _expected_seconds(trials, config, layers)
            if time.perf_counter() - started + expected > budget:
                return
            trial = _Trial(len(trials) + 1, config, f"trial-{run_id}-{len(trials) + 1}")
            trials.append(trial)
            emit(
                {
                    "event": "trial_started",
                    "trial": trial.number,
                    "of": self.config.max_trials,
                    "cluster_id": cluster.id,
                    "config": _config_dict(config),
                }
            )
            result = train_lora(self.model, trial.name, train, config, prefix=prefix)
            trained = time.perf_counter()
            scores = evaluate(self.model, trial.name, val)
            trial.val_em, trial.val_loss, trial.seconds = (
                scores.exact_match,
                scores.loss,
                result.seconds,
            )
            trial.validation_seconds = time.perf_counter() - trained
            emit(
                {
                    "event": "trial_done",
                    "trial": trial.number,
                    "cluster_id": cluster.id,
                    "val_em": trial.val_em,
                    "val_loss": trial.val_loss,
                    "seconds": result.seconds,
                }
            )
            bar.update(1)
            bar.set_postfix(best_em=max(t.val_em for t in trials))

        with tqdm(
            total=self.config.max_trials,
            desc=f"LoRA search, cluster {cluster.id}",
            unit="trial",
            leave=False,
        ) as bar:
            for _ in range(self.config.n_random):
                run(self._sample(rng), bar)
            for leader in sorted(trials, key=_ranking)[: self.config.top_k]:
                for neighbour in self._neighbours(leader.config):
                    run(neighbour, bar)

        if not trials:
            raise StoreError(f"time budget of {budget:g} s was used up before the first trial")
        previous = self.adapters(cluster.id)
        try:
            kept = self._keep(cluster, trials, train, base.exact_match, canary, base_canary, emit)
        finally:
            for trial in trials:
                if trial.name in self.model.adapters:
                    self.model.delete_adapter(trial.name)
        if kept:  # the new adapters saw the cluster's current members; retire the old ones
            for old in previous:
                self.remove(old.id)
        self._evict()
        return kept

    def _split(
        self,
        cluster: Cluster,
        replay: Sequence[tuple[TrainingPair, str | None]] = (),
        gate: Sequence[TrainingPair] = (),
    ) -> tuple[list[TrainingPair], list[TrainingPair]]:
        """Training and validation pairs of a cluster.

        Training: the cluster's training failures (each ``failure_repeats`` times) topped
        up with their verifier-labelled variants, plus a ``replay_fraction`` share of
        rehearsal (``replay`` canaries and their variants), ``train_size`` in all.
        Validation: the held-out failures and variants of them (a few held-out samples
        alone make the ranking and the gate noise). No training pair is a ``gate`` canary
        or a held-out failure."""
        examples, missing = [], 0
        for sample in cluster.samples:
            payload = sample.payload or {}
            reference = payload.get("reference")
            if reference is None or not str(reference).strip():
                missing += 1
                continue
            examples.append((TrainingPair(sample.text, str(reference)), payload.get("expression")))
        if len(examples) < self.config.min_samples:
            raise StoreError(
                f"cluster {cluster.id} has {len(examples)} samples with a reference "
                f"({missing} without one); training needs at least {self.config.min_samples}"
            )
        rng = random.Random(f"{self.config.seed}:{cluster.id}")
        rng.shuffle(examples)
        n_val = max(2, round(len(examples) * self.config.validation_fraction))
        train, val = examples[n_val:], examples[:n_val]
        answer = ANSWER_FORMATS[self.config.answer_format]
        unseen = frozenset(p.prompt for p in gate) | {p.prompt for p, _ in val}
        rehearsal_size = 0
        if replay:
            rehearsal_size = round(self.config.train_size * self.config.replay_fraction)
        rehearsal = _written(replay, answer)[:rehearsal_size]
        rehearsal = _top_up(rehearsal, replay, rehearsal_size, rng, answer, unseen)
        failures = _written(train, answer) * self.config.failure_repeats
        size = self.config.train_size - rehearsal_size
        failures = _top_up(failures, train, size, rng, answer, unseen)
        training = failures + rehearsal
        seen = {p.prompt for p in training}
        val_extra = augment_pairs(val, self.config.val_variants, rng, answer=answer)
        return training, _written(val, answer) + [p for p in val_extra if p.prompt not in seen]

    def _sample(self, rng: random.Random) -> LoRATrainConfig:
        rank = rng.choice(self.config.ranks)
        low, high = self.config.learning_rates
        return LoRATrainConfig(
            rank=rank,
            alpha=rank * rng.choice(self.config.alpha_ratios),
            learning_rate=math.exp(rng.uniform(math.log(low), math.log(high))),
            dropout=rng.choice(self.config.dropouts),
            epochs=rng.choice(self.config.epochs),
            last_layers=rng.choice(self.config.last_layers),
            batch_size=self.config.batch_size,
            seed=self.config.seed,
        )

    def _neighbours(self, config: LoRATrainConfig) -> list[LoRATrainConfig]:
        """The next smaller and larger rank of the search space (alpha scaled along),
        then half and double the learning rate (within its range)."""
        ranks = sorted(self.config.ranks)
        position = ranks.index(config.rank) if config.rank in ranks else 0
        low, high = self.config.learning_rates
        found = []
        for step in (-1, 1):
            if 0 <= position + step < len(ranks):
                rank = ranks[position + step]
                found.append(_replace(config, rank=rank, alpha=config.alpha * rank / config.rank))
        for factor in (0.5, 2.0):
            rate = config.learning_rate * factor
            if low <= rate <= high:
                found.append(_replace(config, learning_rate=rate))
        return found

    def _keep(self, cluster, trials, train, base_em, canary, base_canary, emit):
        kept: list[AdapterRecord] = []
        for trial in sorted(trials, key=_ranking):
            outcome, canary_em = "kept", None
            if len(kept) == self.config.keep:
                outcome = f"ranked below the {self.config.keep} kept"
            elif trial.val_em <= base_em:
                outcome = f"validation EM {trial.val_em:.3f} does not beat the base {base_em:.3f}"
            elif canary:
                canary_em = evaluate(self.model, trial.name, canary).exact_match
                margin = self.config.canary_margin
                if margin is None:
                    passes = self.canary_count(cluster.tag)
                    margin = affordable_loss(
                        passes / (passes + cluster.size), trial.val_em - base_em
                    )
                if canary_em < base_canary - margin:
                    outcome = (
                        f"canary EM {canary_em:.3f} is below the base {base_canary:.3f} "
                        f"by more than {margin:.3f}"
                    )
            if outcome == "kept":
                kept.append(
                    self._register(cluster, trial, len(kept) + 1, len(train), base_em, canary_em)
                )
                emit(
                    {
                        "event": "adapter_kept",
                        "cluster_id": cluster.id,
                        "adapter": kept[-1].id,
                        "val_em": trial.val_em,
                    }
                )
            else:
                log.info("cluster %s, trial %s discarded: %s", cluster.id, trial.number, outcome)
            self._log_trial(
                cluster, trial, outcome, canary_em, kept[-1].id if outcome == "kept" else None
            )
        return kept

    # files and registry

    def _register(
        self,
        cluster: Cluster,
        trial: _Trial,
        rank: int,
        samples: int,
        base_em: float,
        canary_em: float | None,
    ) -> AdapterRecord:
        adapter_id = uuid.uuid4().hex[:12]
        temporary = self.root / f".tmp-{adapter_id}"
        final = self.root / adapter_id
        save_adapter(self.model, trial.name, temporary)
        for path in temporary.iterdir():
            _fsync(path)
        checksum = _checksum(temporary)
        os.replace(temporary, final)
        _fsync(self.root)
        row = {
            "id": adapter_id,
            "cluster_id": cluster.id,
            "tag": cluster.tag,
            "rank": rank,
            "config": json.dumps(_config_dict(trial.config)),
            "val_em": trial.val_em,
            "val_loss": trial.val_loss,
            "base_val_em": base_em,
            "canary_em": canary_em,
            "train_seconds": trial.seconds,
            "samples": samples,
            "centroid": np.asarray(cluster.centroid, dtype=np.float32).tobytes(),
            "path": str(final),
            "checksum": checksum,
            "status": "ready",
            "created": time.time(),
            "last_used": None,
            "uses": 0,
            "wins": 0,
        }
        with transaction(self.db):
            self.db["adapters"].insert(row)
        return _record(row)

    def _log_trial(self, cluster, trial, outcome, canary_em, adapter_id) -> None:
        with transaction(self.db):
            self.db["trials"].insert(
                {
                    "cluster_id": cluster.id,
                    "cluster_version": cluster.version,
                    "number": trial.number,
                    "config": json.dumps(_config_dict(trial.config)),
                    "val_em": trial.val_em,
                    "val_loss": trial.val_loss,
                    "canary_em": canary_em,
                    "seconds": trial.seconds,
                    "outcome": outcome,
                    "adapter_id": adapter_id,
                    "created": time.time(),
                }
            )

    def adapters(
        self, cluster_id: int | None = None, *, status: str | None = "ready"
    ) -> list[AdapterRecord]:
        """Registered adapters, by cluster then rank."""
        clauses, args = [], []
        if cluster_id is not None:
            clauses, args = ["cluster_id = ?"], [cluster_id]
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        rows = self.db["adapters"].rows_where(
            " AND ".join(clauses) or None, args, order_by="cluster_id, rank"
        )
        return [_record(r) for r in rows]

    def get(self, adapter_id: str) -> AdapterRecord:
        row = next(self.db["adapters"].rows_where("id = ?", [adapter_id]), None)
        if row is None:
            raise KeyError(f"no adapter {adapter_id!r} in the registry")
        return _record(row)

    def load(self, adapter_id: str) -> str:
        """Load a registered adapter into the chat model (verifying its checksum) and
        return the name it is loaded under; keeps at most ``max_loaded`` in memory."""
        record = self.get(adapter_id)
        if record.status != "ready":
            raise CorruptAdapter(f"adapter {adapter_id} is {record.status}; it is not loaded")
        if adapter_id in self._loaded and adapter_id not in self.model.adapters:
            # The chat model is shared; its owner may have deleted the adapter directly.
            del self._loaded[adapter_id]
        if adapter_id in self._loaded:
            self._loaded.move_to_end(adapter_id)
            return adapter_id
        found = _checksum(Path(record.path)) if Path(record.path).is_dir() else None
        if found != record.checksum:
            with transaction(self.db):
                self.db["adapters"].update(adapter_id, {"status": "broken"})
            raise CorruptAdapter(
                f"adapter {adapter_id} at {record.path} does not match its checksum "
                "(missing or changed files); marked broken and not loaded"
            )
        self.model.load_adapter(record.path, adapter_id)
        self._loaded[adapter_id] = None
        while len(self._loaded) > self.config.max_loaded:
            self._unload(next(iter(self._loaded)))  # the least recently used
        return adapter_id

    def unload(self) -> None:
        """Free every adapter this store loaded into the chat model (if one was active,
        the base model answers); they load again on the next ``load``."""
        for adapter_id in list(self._loaded):
            self._unload(adapter_id)

    def _unload(self, adapter_id: str) -> None:
        # ChatSage.delete_adapter falls back to the base model if this one was active.
        if adapter_id in self.model.adapters:
            self.model.delete_adapter(adapter_id)
        del self._loaded[adapter_id]

    def record_use(self, adapter_id: str, *, won: bool) -> None:
        """Count a use of an adapter, and a win when its answer passed the Trigger."""
        with transaction(self.db):
            row = self.get(adapter_id)
            self.db["adapters"].update(
                adapter_id,
                {"uses": row.uses + 1, "wins": row.wins + int(won), "last_used": time.time()},
            )

    def remove(self, adapter_id: str) -> None:
        """Delete an adapter: files and row together."""
        record = self.get(adapter_id)
        if adapter_id in self._loaded:
            self._unload(adapter_id)
        with transaction(self.db):
            self.db["adapters"].delete(adapter_id)
            shutil.rmtree(record.path, ignore_errors=True)

    def _evict(self) -> None:
        """Past ``max_on_disk`` ready adapters, remove the least recently used."""
        ready = self.db.execute(
            "SELECT id FROM adapters WHERE status = 'ready' "
            "ORDER BY COALESCE(last_used, created) DESC"
        ).fetchall()
        for (adapter_id,) in ready[self.config.max_on_disk :]:
            log.info("evicting adapter %s (pool limit %d)", adapter_id, self.config.max_on_disk)
            self.remove(adapter_id)

    # routing

    def route(self, text: str, tag: str | None = None) -> list[AdapterRecord]:
        """The adapters of the cluster whose centroid is nearest to ``text`` (cosine at least
        ``route_threshold``, same tag when one is given), best first; [] when none is."""
        rows = list(
            self.db.execute(
                "SELECT cluster_id, centroid FROM adapters WHERE status = 'ready'"
                + (" AND tag = ?" if tag is not None else "")
                + " GROUP BY cluster_id",
                [tag] if tag is not None else [],
            )
        )
        if not rows:
            return []
        vector = np.asarray(self.embeddings.embed_query(text), dtype=np.float64)
        vector /= np.linalg.norm(vector) or 1.0
        best, best_cosine = None, self.config.route_threshold
        for cluster_id, blob in rows:
            centroid = np.frombuffer(blob, dtype=np.float32).astype(np.float64)
            cosine = float(vector @ centroid / (np.linalg.norm(centroid) or 1.0))
            if cosine >= best_cosine:
                best, best_cosine = cluster_id, cosine
        return [] if best is None else self.adapters(best)

    def unsure(self, answer: AIMessage) -> bool:
        """Whether a base-model answer should go to a routed adapter (``route_below``):
        the log-probability of its number is below the threshold, or it has no number."""
        if self.config.route_below is None:
            return True
        tokens = answer.response_metadata.get("logprobs", {}).get("content")
        if not tokens:
            return True
        confidence = number_logprob(tokens)
        return confidence is None or confidence < self.config.route_below

    # canary

    def add_canary(
        self,
        pairs: Sequence[TrainingPair],
        tag: str | None = None,
        expressions: Sequence[str | None] | None = None,
    ) -> None:
        """Add steps the base model answers right to the canary set, under their structure
        tag (the adapters of a cluster are gated on its tag's canaries, the steps they will
        be routed to). A canary's ``expression`` (when its prompt contains it) lets
        rehearsal train on verifier-labelled variants of it."""
        expressions = expressions or [None] * len(pairs)
        if len(expressions) != len(pairs):
            raise ValueError(f"{len(pairs)} canaries but {len(expressions)} expressions")
        with transaction(self.db):
            self.db["canary"].insert_all(
                [
                    {"prompt": p.prompt, "answer": p.answer, "tag": tag, "expression": e}
                    for p, e in zip(pairs, expressions, strict=True)
                ],
                ignore=True,
            )

    def canary(self, tag: str | None = None) -> list[TrainingPair]:
        """The canaries an adapter of ``tag`` is gated on: up to ``canary_size``, a seeded
        sample, never trained on (see ``replay_fraction``)."""
        return self._canaries(tag)[0]

    def _canaries(
        self, tag: str | None
    ) -> tuple[list[TrainingPair], list[tuple[TrainingPair, str | None]]]:
        """The tag's canaries split in two disjoint, seeded parts: the gate's, and the
        rehearsal's (half of them, at most ``canary_size``, when ``replay_fraction`` > 0)."""
        where, args = ("tag = ?", [tag]) if tag is not None else (None, [])
        rows = list(self.db["canary"].rows_where(where, args, order_by="prompt"))
        random.Random(self.config.seed).shuffle(rows)
        gate_size = self.config.canary_size
        if self.config.replay_fraction > 0:
            gate_size = min(gate_size, math.ceil(len(rows) / 2))
        gate, rest = rows[:gate_size], rows[gate_size : gate_size + self.config.canary_size]
        replay = rest if self.config.replay_fraction > 0 else []
        return (
            [TrainingPair(r["prompt"], r["answer"]) for r in gate],
            [(TrainingPair(r["prompt"], r["answer"]), r["expression"]) for r in replay],
        )

    def canary_count(self, tag: str | None = None) -> int:
        where, args = ("tag = ?", [tag]) if tag is not None else (None, [])
        return self.db["canary"].count_where(where, args)

    def _ensure_tables(self) -> None:
        with transaction(self.db):
            self.db["adapters"].create(
                {
                    "id": str,
                    "cluster_id": int,
                    "tag": str,
                    "rank": int,
                    "config": str,
                    "val_em": float,
                    "val_loss": float,
                    "base_val_em": float,
                    "canary_em": float,
                    "train_seconds": float,
                    "samples": int,
                    "centroid": bytes,
                    "path": str,
                    "checksum": str,
                    "status": str,
                    "created": float,
                    "last_used": float,
                    "uses": int,
                    "wins": int,
                },
                pk="id",
                if_not_exists=True,
            )
            self.db["trials"].create(
                {
                    "id": int,
                    "cluster_id": int,
                    "cluster_version": int,
                    "number": int,
                    "config": str,
                    "val_em": float,
                    "val_loss": float,
                    "canary_em": float,
                    "seconds": float,
                    "outcome": str,
                    "adapter_id": str,
                    "created": float,
                },
                pk="id",
                if_not_exists=True,
            )
            self.db["canary"].create(
                {"prompt": str, "answer": str, "tag": str, "expression": str},
                pk="prompt",
                if_not_exists=True,
            )
            if "expression" not in self.db["canary"].columns_dict:  # files of 0.1.0
                self.db["canary"].add_column("expression", str)
            self.db["adapters"].create_index(["cluster_id"], if_not_exists=True)


def affordable_loss(base_accuracy: float, gain: float) -> float:
    """The canary exact match an adapter may lose on a tag the base model answers right
    with ``base_accuracy``, given its exact-match ``gain`` on the tag's failures: the
    loss that keeps p * canary + (1 - p) * failures at or above the base model's p."""
    if base_accuracy <= 0:
        return math.inf
    return (1 - base_accuracy) / base_accuracy * gain


def _expected_seconds(trials: Sequence[_Trial], config: LoRATrainConfig, layers: int) -> float:
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


def _ranking(trial: _Trial) -> tuple[float, float]:
    """Best first: higher validation exact match, then lower validation loss."""
    return (-trial.val_em, trial.val_loss)


def _replace(config: LoRATrainConfig, **changes: Any) -> LoRATrainConfig:
    return LoRATrainConfig(**{**asdict(config), **changes})


def _config_dict(config: LoRATrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data["target_modules"] = list(data["target_modules"])
    return data


def _record(row: dict[str, Any]) -> AdapterRecord:
    data = {k: v for k, v in row.items() if k != "centroid"}
    data["config"] = json.loads(data["config"])
    return AdapterRecord(**data)


def _written(
    examples: Sequence[tuple[TrainingPair, str | None]], answer: AnswerFormat
) -> list[TrainingPair]:
    """Each pair with its answer written by ``answer`` (pairs without an expression keep
    their reference as it is)."""
    return [TrainingPair(p.prompt, answer(e, p.answer)) if e else p for p, e in examples]


def _top_up(
    pairs: list[TrainingPair],
    sources: Sequence[tuple[TrainingPair, str | None]],
    size: int,
    rng: random.Random,
    answer: AnswerFormat,
    exclude: frozenset[str] = frozenset(),
) -> list[TrainingPair]:
    """``pairs`` topped up to ``size`` with verifier-labelled variants of ``sources``,
    none of whose prompts is in ``exclude`` (a variant of a small expression can land on
    another step exactly)."""
    missing = size - len(pairs)
    if missing <= 0 or not sources:
        return pairs
    per_source = math.ceil(missing / len(sources)) + 1  # one spare for excluded ones
    variants = augment_pairs(sources, per_source, rng, answer=answer)
    variants = [p for p in variants if p.prompt not in exclude]
    return pairs + variants[:missing]


def _checksum(folder: Path) -> str:
    """SHA-256 over the adapter's files (names and contents), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
