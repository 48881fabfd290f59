"""bench_adapt's records and methods: the atomic steps, each method's answers as routed
(the product's adaptation policy), the baselines' fixed configuration, and the retention,
problem-level and Trigger figures of a seed."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from sklearn.metrics import roc_auc_score, roc_curve

from sage_agent import BufferConfig, ChatSage, SageAgent, StoreConfig
from sage_agent.buffer import Cluster
from sage_agent.errors import StoreError
from sage_agent.records import TrainingPair
from sage_agent.scoring.trigger import METRICS, Trigger, TriggerConfig
from sage_agent.store import LoRAStore
from sage_agent.tasks.data import read_tasks
from sage_agent.tasks.decompose import DecompositionError, Task, annotation_decomposer
from sage_agent.tasks.families import ARITHMETIC, family_named, family_of_task
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT

matplotlib.use("Agg")


METHODS = (
    "Base",
    "LoRA (all failures)",
    "CA-LoRA (KMeans)",
    "CA-LoRA (HDBSCAN)",
    "LoRA Store (no buffer)",
    "SAGE (every routed step)",
    "SAGE",
)
MIXED_TAG = "mixed"  # the canary tag of the baselines' clusters, which mix operators
OPERATORS = ("*", "+", "-", "/")


@dataclass(frozen=True)
class Atom:
    """An atomic step as the graph asks it, with the reference in place of earlier answers
    (an item of another task family: its one step, its family's prompt and answer cap)."""

    prompt: str
    expression: str | None
    reference: str
    tag: str
    family: str = ARITHMETIC.name
    max_tokens: int = ANSWER_MAX_TOKENS


@dataclass
class MethodResult:
    name: str
    right: list[bool]
    answers: list[str]
    adapters: int = 0
    train_seconds: float = 0.0
    routed: int = 0


@dataclass
class SeedResult:
    seed: int
    stream_atoms: int
    failures: int
    references: list[str]
    methods: dict[str, MethodResult] = field(default_factory=dict)
    problem_em: dict[str, float] = field(default_factory=dict)
    problems_scored: int = 0
    retention: list[dict] = field(default_factory=list)
    trigger: dict = field(default_factory=dict)
    sage_summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    """Wall time of the seed's command."""
    command: str = ""
    family: str = ARITHMETIC.name
    """The task family of the data (arithmetic: GSM8K)."""


@dataclass(frozen=True)
class Settings:
    stream: int
    heldout: int
    store: StoreConfig
    buffer: BufferConfig
    search_seconds: float
    adapt_seconds: float
    max_clusters: int | None = None
    """Train only the largest clusters of each baseline (--quick: 1)."""


def answer_all(
    chat: ChatSage, atoms: Sequence[Atom], adapters: Sequence[str | None] | None = None
) -> list[AIMessage]:
    """The model's answers to ``atoms``, each with its adapter (None: the base model),
    batched per adapter."""
    adapters = adapters or [None] * len(atoms)
    groups: dict[tuple[str | None, int], list[int]] = defaultdict(list)
    for i, adapter in enumerate(adapters):
        groups[adapter, atoms[i].max_tokens].append(i)
    answers: list[AIMessage] = [AIMessage("")] * len(atoms)
    for (name, max_tokens), indices in groups.items():
        with chat.using_adapter(name):
            messages = chat.bind(max_tokens=max_tokens).batch([atoms[i].prompt for i in indices])
            for i, message in zip(indices, messages, strict=True):
                answers[i] = message
    return answers


def correct(answers: Sequence[AIMessage], atoms: Sequence[Atom]) -> list[bool]:
    """Each answer judged by its atom's family (arithmetic: by its number)."""
    return [
        family_named(x.family).judge(a.text, x.reference)
        for a, x in zip(answers, atoms, strict=True)
    ]


def members(atom: Atom) -> tuple[str, str | None, str]:
    return atom.prompt, atom.expression, atom.reference


def mixed_tag(atoms: Sequence[Atom]) -> str:
    """The tag of a baseline's clusters: "mixed" for arithmetic, whose clusters mix
    operators; another family's own tag, so that its recipe judges and varies its items."""
    family = atoms[0].family if atoms else ARITHMETIC.name
    return MIXED_TAG if family == ARITHMETIC.name else family_named(family).tag


def fixed_store_config(
    settings: Settings, seconds: float, samples_per_second: float
) -> StoreConfig:
    """One configuration, one trial, no gate, routing always to the nearest centroid,
    trained for as many epochs as ``seconds`` buy at ``samples_per_second`` (SAGE's
    training rate), one at least."""
    pairs = max(1, settings.store.recipe.train_size)
    epochs = max(1, round(seconds * samples_per_second / pairs))
    return settings.store.replace(
        ranks=(16,),
        alpha_ratios=(2.0,),
        learning_rates=(1e-3, 1e-3),
        dropouts=(0.0,),
        epochs=(epochs,),
        rungs=(1.0,),
        n_random=1,
        top_k=1,
        keep=1,
        max_trials=1,
        canary_margin=1.0,
        route_threshold=-1.0,
    )


def training_rate(store: LoRAStore) -> tuple[float, float]:
    """The seconds a store's searches trained and the samples per second they trained
    at (one optimiser step is a batch)."""
    trials = store.registry.trials()
    seconds = sum(t.seconds or 0.0 for t in trials)
    samples = sum(len(t.curve) for t in trials) * store.config.search.batch_size
    return seconds, samples / seconds if seconds else 1.0


def adapt_on_clusters(
    chat: ChatSage,
    embeddings: Embeddings,
    folder: Path,
    config: StoreConfig,
    clusters: Sequence[Cluster],
    canaries: Sequence[Atom],
    canary_tag: Callable[[Atom], str],
    search_seconds: float,
    max_clusters: int | None,
) -> LoRAStore:
    """A fresh store in ``folder`` with the stream's passes as canaries, and one
    optimize() per cluster, largest first, at most ``max_clusters`` (clusters too small
    for the store are passed over)."""
    clusters = sorted(clusters, key=lambda c: -c.size)
    folder.mkdir(parents=True)
    store = LoRAStore(folder / "store.db", folder / "adapters", chat, config, embeddings)
    by_tag: dict[str, list[Atom]] = defaultdict(list)
    for atom in canaries:
        by_tag[canary_tag(atom)].append(atom)
    for tag, atoms in by_tag.items():
        store.add_canary(
            [TrainingPair(a.prompt, a.reference) for a in atoms],
            tag=tag,
            expressions=[a.expression for a in atoms],
        )
    for cluster in clusters[:max_clusters]:
        try:
            store.optimize(cluster, max_seconds=search_seconds)
        except StoreError as error:
            print(f"  cluster {cluster.id} ({cluster.tag}): {error}")
    return store


def routed_answers(
    name: str,
    store: LoRAStore,
    atoms: Sequence[Atom],
    base_answers: Sequence[AIMessage],
    by_tag: bool,
    gate: bool,
) -> MethodResult:
    """Each step answered as the product's adaptation policy decides (``store.policy``,
    the graph's and the middleware's rule): by the nearest cluster's best adapter when
    there is one and it routes all or the base model is unsure of its answer, and its
    answer stands where the model is surer of it than of the base answer (the contest);
    otherwise by the base model (whose answers are reused). Without ``gate`` the base
    answer is not consulted: the routed adapter answers every step it is routed."""
    routes: list[str | None] = []
    for atom, base in zip(atoms, base_answers, strict=True):
        route = store.policy.route(atom.prompt, tag=atom.tag if by_tag else None)
        routes.append(store.policy.choose(route, base if gate else None))
    answers = list(base_answers)
    for adapter_id in sorted({r for r in routes if r is not None}):
        # One adapter at a time: the store keeps at most max_loaded in memory, and a
        # method may route to more (loading them all first evicted the earliest).
        chosen = [i for i, r in enumerate(routes) if r == adapter_id]
        loaded = store.load(adapter_id)
        adapted = answer_all(store.model, [atoms[i] for i in chosen], [loaded] * len(chosen))
        for i, message in zip(chosen, adapted, strict=True):
            if store.policy.keeps(message, base_answers[i] if gate else None, atoms[i].tag):
                answers[i] = message
    routed = [r for r in routes if r is not None]
    result = MethodResult(
        name,
        correct(answers, atoms),
        [a.text for a in answers],
        adapters=len(store.adapters()),
        train_seconds=sum(t.seconds or 0.0 for t in store.registry.trials()),
        routed=len(routed),
    )
    store.unload()
    return result


def share_right(right: Sequence[bool], among: np.ndarray) -> float | None:
    """The share of ``among``'s steps answered right (None: there are none)."""
    chosen = np.array(right, dtype=bool)[among]
    return float(chosen.mean()) if chosen.size else None


def record(result: SeedResult, method: MethodResult) -> None:
    """Keep ``method``'s result and print it at once, so a stopped run still has it."""
    result.methods[method.name] = method
    base = np.array(result.methods["Base"].right, dtype=bool)
    right = np.array(method.right)
    print(
        f"  {method.name}: EM {right.mean():.3f} (where base right "
        f"{_shown(share_right(method.right, base))}, where base wrong "
        f"{_shown(share_right(method.right, ~base))}), {method.adapters} adapters, "
        f"{method.routed} routed, {method.train_seconds:.0f} s training"
    )


def _shown(share: float | None) -> str:
    return "-" if share is None else f"{share:.3f}"


def retention(
    store: LoRAStore, heldout: Sequence[Atom], base_answers: Sequence[AIMessage]
) -> list[dict]:
    """Each kept adapter's exact match on the held-out steps of its tag that the base
    model answers right: answering all of them, and only those the base model is unsure
    of (the routing's confidence gate; the sure ones keep their right base answer)."""
    rows = []
    right = correct(base_answers, heldout)
    for adapter in store.adapters():
        indices = [
            i
            for i, (a, ok) in enumerate(zip(heldout, right, strict=True))
            if ok and a.tag == adapter.tag
        ]
        if not indices:
            continue
        passes = [heldout[i] for i in indices]
        name = store.load(adapter.id)
        kept = correct(answer_all(store.model, passes, [name] * len(passes)), passes)
        unsure = [
            store.policy.adapter_answers(False, base_answers[i], adapter.tag) for i in indices
        ]
        rows.append(
            {
                "adapter": adapter.id,
                "tag": adapter.tag,
                "passes": len(passes),
                "em": sum(kept) / len(passes),
                "unsure": sum(unsure),
                "em_gated": sum(k or not u for k, u in zip(kept, unsure, strict=True))
                / len(passes),
            }
        )
    store.unload()
    return rows


def problem_level(agent: SageAgent, tasks: Sequence[Task]) -> tuple[dict[str, float], int]:
    """Final-answer EM on held-out problems of at most three steps, each step answered
    with the model's own earlier answers: base model, then SAGE's adapters routed."""
    if any(family_of_task(t) is not ARITHMETIC for t in tasks):
        return {}, 0  # one step a task: the atomic table says it all
    short = [t for t in tasks if len(annotation_decomposer(t)) <= 3]
    if not short:
        return {}, 0
    agent.configure(substitute="answers")
    scores = {}
    for name, route in (("Base", False), ("SAGE", True)):
        scores[name] = agent.run(short, train=False, route=route).problem_em
    return scores, len(short)


def trigger_separation(
    atoms: Sequence[Atom], answers: Sequence[AIMessage], embeddings: Embeddings
) -> dict:
    """ROC of each Trigger metric (and the anomaly score) separating wrong base answers
    (out-of-distribution) from right ones, the false positive rate at the paper's
    threshold, and the sweeps of the paper's Figure 3."""
    right = correct(answers, atoms)
    trigger = Trigger(TriggerConfig(numeric="never"), embeddings=embeddings)
    scored = trigger.score_batch(
        [a.text for a in answers],
        [a.reference for a in atoms],
        logits_margins=[a.response_metadata.get("logits_margin_mean") for a in answers],
    )
    wrong = np.array([not ok for ok in right], dtype=int)
    if wrong.min() == wrong.max():
        return {}
    out: dict = {"n_in": int((1 - wrong).sum()), "n_out": int(wrong.sum()), "metrics": {}}
    for metric in METRICS:
        values = [r.metrics.get(metric) for r in scored]
        if any(v is None for v in values):
            continue
        anomaly = 1 - np.asarray(values, dtype=float)
        out["metrics"][metric] = {
            "auc": float(roc_auc_score(wrong, anomaly)),
            "fpr": float(((anomaly >= 0.5) & (wrong == 0)).sum() / (1 - wrong).sum()),
        }
    anomaly = np.array([r.anomaly_score for r in scored])
    out["anomaly_auc"] = float(roc_auc_score(wrong, anomaly))
    out["roc"] = [list(map(float, axis)) for axis in roc_curve(wrong, anomaly)[:2]]
    out["threshold_sweep"] = [
        {
            "threshold": float(t),
            "fpr": float(((anomaly >= t) & (wrong == 0)).sum() / (1 - wrong).sum()),
            "tpr": float(((anomaly >= t) & (wrong == 1)).sum() / wrong.sum()),
        }
        for t in np.linspace(0.1, 0.9, 9)
    ]
    per_metric = np.array(
        [[1 - (r.metrics.get(m) or 0.0) for m in METRICS] for r in scored], dtype=float
    )
    sweep = []
    for lm_weight in (0.0, 0.25, 0.5, 0.75):
        rest = (1 - lm_weight) / 3
        weights = np.array([lm_weight, rest, rest, rest])
        sweep.append(
            {"lm_weight": lm_weight, "auc": float(roc_auc_score(wrong, per_metric @ weights))}
        )
    out["weight_sweep"] = sweep
    return out


def atoms_of(tasks: Sequence[Task]) -> list[Atom]:
    found = []
    for task in tasks:
        family = family_of_task(task)
        if not family.multi_step:
            (step,) = family.steps(task)
            assert step.reference is not None  # a family's step carries its target
            found.append(
                Atom(step.question, None, step.reference, step.tag, family.name, family.max_tokens)
            )
            continue
        for step in annotation_decomposer(task):
            if step.expression and step.reference:
                prompt = ATOMIC_PROMPT.format(expression=step.expression)
                found.append(Atom(prompt, step.expression, step.reference, step.tag))
    return found


def split_problems(path: Path, seed: int, stream: int, heldout: int) -> tuple[list, list]:
    """Stream and held-out problems (items of another family), disjoint, in a seeded
    order; problems without calculator annotations are left out."""
    tasks = read_tasks(path)
    random.Random(seed).shuffle(tasks)
    usable = []
    for task in tasks:
        try:
            if family_of_task(task).multi_step:
                annotation_decomposer(task)
        except DecompositionError:
            continue
        usable.append(task)
        if len(usable) == stream + heldout:
            break
    return usable[:stream], usable[stream:]
