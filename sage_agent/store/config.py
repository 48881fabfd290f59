"""Settings of the LoRA Store, one dataclass per concern.

``SearchConfig`` is the search space and budget of Cluster-aware LoRA Optimisation,
``RecipeConfig`` how a cluster becomes training and validation pairs, ``GateConfig`` the
regression gate on canaries, ``RouterConfig`` routing and loading, ``RegistryConfig`` the
adapters kept on disk. ``StoreConfig`` holds one of each and the rule for when a cluster
is trained, as peft keeps a ``LoraConfig`` apart from the settings of a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sage_agent.database import LOCK_TIMEOUT
from sage_agent.errors import ConfigError
from sage_agent.training.formats import ANSWER_FORMATS


@dataclass
class SearchConfig:
    """The CLO search: space, candidates and budget (paper Algorithm 2)."""

    ranks: tuple[int, ...] = field(default=(8, 16, 32), metadata={"help": "LoRA ranks."})
    alpha_ratios: tuple[float, ...] = field(
        default=(1.0, 2.0), metadata={"help": "alpha = ratio * rank."}
    )
    learning_rates: tuple[float, float] = field(
        default=(5e-4, 2e-3), metadata={"help": "Learning-rate range, sampled log-uniformly."}
    )
    dropouts: tuple[float, ...] = field(
        default=(0.0,),
        metadata={
            "help": "LoRA dropouts; one value leaves the random draws to rank and learning rate."
        },
    )
    epochs: tuple[int, ...] = field(default=(3,), metadata={"help": "Epoch counts."})
    last_layers: tuple[int | None, ...] = field(
        default=(None,),
        metadata={
            "help": "Target layers: None for all, N for the last N (faster: the frozen "
            "layers run once per search, see trainer.FrozenPrefix)."
        },
    )
    rungs: tuple[float, ...] = field(
        default=(0.125, 0.5, 1.0),
        metadata={
            "help": "Successive halving: the shares of a configuration's training after "
            "which trials are ranked. Every candidate trains to the first; the better "
            "half of those at a rung train on to the next. (1.0,): every trial trains "
            "fully."
        },
    )
    n_random: int = field(
        default=6,
        metadata={"help": "n: random configurations first (at most; see sized_brackets)."},
    )
    sized_brackets: bool = field(
        default=True,
        metadata={
            "help": "Start only as many of a bracket's candidates as leave the budget for "
            "its better half to reach the second rung, from the pace of the trials so far "
            "(Hyperband sizes its brackets to a budget likewise). False: start candidates "
            "while their first rung fits."
        },
    )
    top_k: int = field(
        default=2, metadata={"help": "k: configurations whose neighbourhood is searched."}
    )
    keep: int = field(default=3, metadata={"help": "Adapters kept per cluster."})
    train_leader_on: bool = field(
        default=True,
        metadata={
            "help": "The seconds the brackets leave train the best trial on, as many "
            "optimiser steps as fit, and rank it again (its weights go back if it ranks "
            "worse). False: a search may end with its budget unspent."
        },
    )
    warm_start: bool = field(
        default=True,
        metadata={
            "help": "A retrain's first candidates, the tag's kept configurations, train on "
            "from those adapters' weights, so that successive searches add up (the "
            "neighbours of another rank start afresh). False: from peft's initialisation."
        },
    )
    confirm_all: bool = field(
        default=False,
        metadata={
            "help": "Generate the validation answers of every trial considered for keeping. "
            "By default a trial whose teacher-forced exact match (a lower bound of the "
            "generated one) already beats the base model is kept without generating. True "
            "measures how often the two verdicts agree."
        },
    )
    max_trials: int = field(
        default=10, metadata={"help": "Configurations one search may try (its trial budget)."}
    )
    max_seconds: float = field(
        default=300.0,
        metadata={
            "help": "Time budget of one search: a trial starts only if the trials so far "
            "say it ends inside the budget (the first trial always runs)."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    family_rules: bool = field(
        default=True,
        metadata={
            "help": "A task family that says how its rule is learnt (TaskFamily.rule: "
            "BIG-Bench Hard's web_of_lies and boolean_expressions) has its searches train "
            "at the rule's batch size, for enough epochs to reach the rule's samples, and "
            "their leader trained on to those samples even past max_seconds (with "
            "train_leader_on). False: "
            "every family searches as configured."
        },
    )

    def __post_init__(self) -> None:
        for name in ("ranks", "alpha_ratios", "dropouts", "epochs", "last_layers"):
            if not getattr(self, name):
                raise ConfigError(f"search space {name} is empty")
        low, high = self.learning_rates
        if not 0 < low <= high:
            raise ConfigError(f"learning_rates must satisfy 0 < low <= high: {self.learning_rates}")
        if any(r < 1 for r in self.ranks) or any(e < 1 for e in self.epochs):
            raise ConfigError("ranks and epochs must be at least 1")
        if any(not 0 <= d < 1 for d in self.dropouts) or any(a <= 0 for a in self.alpha_ratios):
            raise ConfigError("dropouts must lie in [0, 1) and alpha_ratios be positive")
        if any(n is not None and n < 1 for n in self.last_layers):
            raise ConfigError("last_layers entries must be None or at least 1")
        if not self.rungs or list(self.rungs) != sorted(set(self.rungs)):
            raise ConfigError(f"rungs must be increasing shares: {self.rungs}")
        if not self.rungs[0] > 0 or self.rungs[-1] != 1.0:
            raise ConfigError(f"rungs must lie in (0, 1] and end at 1.0: {self.rungs}")
        if min(self.n_random, self.top_k, self.keep, self.max_trials, self.batch_size) < 1:
            raise ConfigError("n_random, top_k, keep, max_trials and batch_size must be at least 1")
        if not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive, not {self.max_seconds}")


@dataclass
class RecipeConfig:
    """How a cluster's failures become training and validation pairs."""

    train_size: int = field(
        default=256,
        metadata={
            "help": "Training pairs per search: the cluster's training split topped up to "
            "this many with verifier-labelled variants of its samples (same expression "
            "shape, new numbers; see sage_agent.training.augment). 0: the cluster's samples alone."
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
            "gives the result alone, 'worked' the computation in steps "
            "('27*8=20*8+7*8=160+56=216')."
        },
    )
    answers_in_steps: bool = field(
        default=True,
        metadata={
            "help": "For a task family that can write an answer in steps (BIG-Bench Hard's "
            "object_counting: 'flute 1, pianos 3, violin 4'; web_of_lies, navigate, "
            "boolean_expressions, multistep_arithmetic_two), its training, validation and "
            "gate answers are written so; the judge reads the same number or label."
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
    balance_labels: bool = field(
        default=True,
        metadata={
            "help": "For a task family with a label space (PubMedQA's yes / no / maybe, a "
            "BIG-Bench Hard task's True / False): each label found among the training "
            "pairs takes an equal share of them, so that an adapter does not learn the "
            "label prior of its cluster's failures."
        },
    )

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must lie in (0, 1): {self.validation_fraction}")
        if self.train_size < 0 or self.val_variants < 0:
            raise ConfigError("train_size and val_variants must be non-negative")
        if self.answer_format not in ANSWER_FORMATS:
            raise ConfigError(
                f"answer_format must be one of {sorted(ANSWER_FORMATS)}, not {self.answer_format!r}"
            )
        if self.failure_repeats < 1 or not 0 <= self.replay_fraction < 1:
            raise ConfigError(
                "failure_repeats must be at least 1 and replay_fraction lie in [0, 1): "
                f"{self.failure_repeats}, {self.replay_fraction}"
            )


@dataclass
class GateConfig:
    """The regression gate: what an adapter may cost on the steps the base model gets right."""

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

    def __post_init__(self) -> None:
        if self.canary_margin is not None and not self.canary_margin >= 0:
            raise ConfigError(f"canary_margin must be None or >= 0, not {self.canary_margin}")
        if self.canary_size < 0:
            raise ConfigError(f"canary_size must be non-negative, not {self.canary_size}")


@dataclass
class RouterConfig:
    """Which adapter answers a step, and how many stay loaded."""

    route_threshold: float = field(
        default=0.6, metadata={"help": "Routing needs centroid cosine at least this."}
    )
    route_below: float | None = field(
        default=-1.0,
        metadata={
            "help": "Route a first attempt only when the base model is unsure: the "
            "log-probability of the number in its answer is below this (or it gave no "
            "number). A sure base answer is kept, so adapters are not handed the steps the "
            "base model already gets right. None: route every step."
        },
    )
    contest: bool = field(
        default=True,
        metadata={
            "help": "When a routed adapter answers (the base model unsure, or the adapter "
            "routes all), its answer replaces the base model's only if the model is surer "
            "of what it says: the log-probability of its number (or label) above that of "
            "the base answer's. On held-out GSM8K steps this kept every right base answer "
            "(4 of 66 lost without it) and 37 of the 45 fixes (benchmarks/results/"
            "contest.md). The base model then answers every routed step first. Needs "
            "route_below set (the gate on)."
        },
    )
    route_by_operators: bool = field(
        default=True,
        metadata={
            "help": 'A step whose operator signature has no adapter of its own ("*/") goes '
            'to the nearest cluster of a signature made of some of its operators ("*", '
            '"/"), above the threshold: mixed steps are too few to form clusters of '
            "their own."
        },
    )
    route_whole_families: bool = field(
        default=True,
        metadata={
            "help": "A step of a one-step family (PubMedQA, a BIG-Bench Hard task, your "
            "labels), whose tag is the task itself, goes to its tag's nearest cluster "
            "however far: the family's items share a form, not a topic, so their cosine to "
            "a cluster's centroid says little. Arithmetic steps keep route_threshold."
        },
    )
    max_loaded: int = field(default=4, metadata={"help": "M: adapters loaded in memory (LRU)."})

    def __post_init__(self) -> None:
        if self.max_loaded < 1:
            raise ConfigError(f"max_loaded must be at least 1, not {self.max_loaded}")
        if not -1.0 <= self.route_threshold <= 1.0:
            raise ConfigError(f"route_threshold must lie in [-1, 1], not {self.route_threshold}")


@dataclass
class RegistryConfig:
    """The adapters on disk and the database they are registered in."""

    max_on_disk: int = field(default=50, metadata={"help": "N: adapters kept on disk."})
    lock_timeout: float = field(
        default=LOCK_TIMEOUT,
        metadata={"help": "Seconds to wait for another process's database lock."},
    )

    def __post_init__(self) -> None:
        if self.max_on_disk < 1 or not self.lock_timeout > 0:
            raise ConfigError("max_on_disk must be at least 1 and lock_timeout positive")


@dataclass
class StoreConfig:
    """Everything the LoRA Store is set with, and when a cluster is trained."""

    search: SearchConfig = field(default_factory=SearchConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    min_train_samples: int = field(
        default=12,
        metadata={"help": "Smallest cluster trained on (samples with a reference)."},
    )
    retrain_growth: float = field(
        default=2.0,
        metadata={
            "help": "A trained cluster is trained again once it has this many times "
            "the members it had then."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split, the search and canaries."})

    def __post_init__(self) -> None:
        if self.min_train_samples < 4:
            raise ConfigError(f"min_train_samples must be at least 4, not {self.min_train_samples}")
        if not self.retrain_growth > 1:
            raise ConfigError(f"retrain_growth must be above 1, not {self.retrain_growth}")
        if self.registry.max_on_disk < self.search.keep:
            raise ConfigError(
                f"registry.max_on_disk ({self.registry.max_on_disk}) must be at least "
                f"search.keep ({self.search.keep})"
            )

    def replace(self, **changes: Any) -> StoreConfig:
        """A copy with fields changed by name, in whichever part holds them:
        ``config.replace(ranks=(8,), canary_size=24, min_train_samples=20)``."""
        parts: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in changes.items():
            if name in _TOP_FIELDS:
                top[name] = value
                continue
            part = next((p for p in _PARTS if name in _field_names(p)), None)
            if part is None:
                raise ConfigError(f"StoreConfig has no setting {name!r}")
            parts.setdefault(part, {})[name] = value
        replaced = {p: dataclasses.replace(getattr(self, p), **f) for p, f in parts.items()}
        return dataclasses.replace(self, **top, **replaced)


_PARTS = ("search", "recipe", "gate", "router", "registry")
_TOP_FIELDS = ("min_train_samples", "retrain_growth", "seed")


def _field_names(part: str) -> set[str]:
    kind = {f.name: f.default_factory for f in dataclasses.fields(StoreConfig)}[part]
    return {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
