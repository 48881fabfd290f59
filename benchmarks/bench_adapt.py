"""Does it adapt? SAGE against the paper's baselines on GSM8K, with the embedded model.

    python benchmarks/bench_adapt.py --data ../shared/data/gsm8k/train.jsonl
        [--seeds 0,1,2] [--stream 100] [--heldout 40] [--search-seconds 120]
        [--adapt-seconds 720] [--max-clusters N] [--buffer-size 25] [--min-cluster 12] [--quick]
        [--report-only]

Per seed, the GSM8K problems are shuffled with the seed; the first ``--stream`` are the
stream the methods adapt on, the next ``--heldout`` (disjoint) are scored afterwards with
routing only, nothing trained. Steps come from the calculator annotations.

Atomic-step table (the paper's protocol: each step asked as "Compute <expression>. Reply
with the number only." with the references of earlier steps in place):

* Base: the model alone.
* LoRA (all failures): one adapter on every stream failure, used for every held-out step.
* CA-LoRA (KMeans / HDBSCAN): the stream failures clustered once, statically (KMeans with
  k = the operator signatures that have enough failures; HDBSCAN as the buffer runs it),
  one adapter a cluster; a held-out step goes to the nearest centroid.
* LoRA Store (no buffer): one cluster per operator signature, each through the store's
  search and regression gate; routed as SAGE routes.
* SAGE: the stream through the SAGE graph (Trigger, buffer, store, retries) with the
  CLI's defaults (120 s searches, 720 s of adaptation for the run), then routed as the
  graph routes: a held-out step goes to its cluster's best adapter when the base model
  is unsure of its answer (``RouterConfig.route_below``: the log-probability of its
  number), or always when that adapter routes all (``route_all``).
* SAGE (every routed step): the same adapters, without that confidence gate.

SAGE runs first; every other method then gets the training seconds SAGE used, shared
among its clusters: the baselines train one configuration (rank 16, alpha 32, learning
rate 1e-3) for as many epochs as those seconds buy at SAGE's training rate, with no
regression gate, and the LoRA Store (no buffer) searches with those seconds as its budget.
Every method trains on the same data the store builds from a cluster (its failures,
verifier-labelled variants, rehearsal of passes), so the table compares the clustering,
the search, the gate and the routing. The baselines apply their adapter to every step
they route, as the paper's do. The store keeps an adapter only when it beats the base
model on the cluster's validation split, for the baselines too: "adapters" counts the
kept ones.

Problem-level table: held-out problems of at most three steps through the graph, each step
using the model's own earlier answers; final-answer EM of the base model and of SAGE.

Trigger: on the held-out steps' base answers, in-distribution = answered right and
out-of-distribution = answered wrong; per-metric ROC AUC and false positive rate at the
paper's threshold, and the threshold and weight sweeps of its Figure 3.

Retention: each SAGE adapter's exact match on its tag's held-out passes (steps the base
model answers right), against the base model's (1.0 by construction), on all of them and
as routed (unsure ones only). The atomic table's "EM where base right" column is the same
for every method over all held-out steps.

Each seed's results are saved to docs/results/seeds/seed-N.json, and the tables are made
from every saved seed run with the same settings: ``--seeds 0``, then ``--seeds 1`` and
``--seeds 2`` (one at a time, in the background) make one 3-seed report, and
``--report-only`` remakes it from the saved seeds without running one. Writes
docs/results.md and its plots (docs/results/); the report counts each method's right
held-out steps per operator too (the steps rebuilt from ``--data``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hdbscan
import matplotlib
import numpy as np
from common import cluster_of
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from scipy.stats import wilcoxon
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score, roc_curve

from sage_agent import BufferConfig, ChatSage, SageAgent, StoreConfig, default_embeddings
from sage_agent.buffer import Cluster
from sage_agent.cli import RUN_OPTIONS
from sage_agent.context import AdaptationBudget
from sage_agent.data import read_tasks
from sage_agent.decompose import DecompositionError, Task, annotation_decomposer
from sage_agent.errors import StoreError
from sage_agent.numeric import math_metrics, numbers_match, parse_number
from sage_agent.records import TrainingPair
from sage_agent.steps import ATOMIC_PROMPT
from sage_agent.store import LoRAStore
from sage_agent.trainer import ANSWER_MAX_TOKENS
from sage_agent.trigger import METRICS, Trigger, TriggerConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCS = Path(__file__).resolve().parent.parent / "docs"
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
    """An atomic step as the graph asks it, with the reference in place of earlier answers."""

    prompt: str
    expression: str
    reference: str
    tag: str


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


def settings_key(settings: Settings) -> dict:
    """What must match for seeds to share a table."""
    return {
        "stream": settings.stream,
        "heldout": settings.heldout,
        "search_seconds": settings.search_seconds,
        "adapt_seconds": settings.adapt_seconds,
        "max_clusters": settings.max_clusters,
        "store": repr(settings.store),
        "buffer": repr(settings.buffer),
    }


def save_seed(folder: Path, result: SeedResult, settings: Settings) -> None:
    """Write one seed's results beside the report, so seeds run one command at a time
    merge into one table."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"settings": settings_key(settings), "result": asdict(result)}
    (folder / f"seed-{result.seed}.json").write_text(json.dumps(data, indent=1, default=str))


def load_seeds(folder: Path, settings: Settings) -> list[SeedResult]:
    """Every saved seed run with these settings, by seed (others are named and left out)."""
    results = []
    for path in sorted(folder.glob("seed-*.json")):
        data = json.loads(path.read_text())
        if data["settings"] != settings_key(settings):
            print(f"{path.name}: other settings, left out of the tables")
            continue
        methods = {k: MethodResult(**v) for k, v in data["result"].pop("methods").items()}
        results.append(SeedResult(**data["result"], methods=methods))
    return sorted(results, key=lambda r: r.seed)


def atoms_of(tasks: Sequence[Task]) -> list[Atom]:
    found = []
    for task in tasks:
        for step in annotation_decomposer(task):
            if step.expression and step.reference:
                prompt = ATOMIC_PROMPT.format(expression=step.expression)
                found.append(Atom(prompt, step.expression, step.reference, step.tag))
    return found


def split_problems(path: Path, seed: int, stream: int, heldout: int) -> tuple[list, list]:
    """Stream and held-out problems, disjoint, in a seeded order; problems without
    calculator annotations are left out."""
    tasks = read_tasks(path)
    random.Random(seed).shuffle(tasks)
    usable = []
    for task in tasks:
        try:
            annotation_decomposer(task)
        except DecompositionError:
            continue
        usable.append(task)
        if len(usable) == stream + heldout:
            break
    return usable[:stream], usable[stream:]


def answer_all(
    chat: ChatSage, atoms: Sequence[Atom], adapters: Sequence[str | None] | None = None
) -> list[AIMessage]:
    """The model's answers to ``atoms``, each with its adapter (None: the base model),
    batched per adapter."""
    adapters = adapters or [None] * len(atoms)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, adapter in enumerate(adapters):
        groups[adapter].append(i)
    answers: list[AIMessage] = [AIMessage("")] * len(atoms)
    bound = chat.bind(max_tokens=ANSWER_MAX_TOKENS)
    for name, indices in groups.items():
        with chat.using_adapter(name):
            messages = bound.batch([atoms[i].prompt for i in indices])
            for i, message in zip(indices, messages, strict=True):
                answers[i] = message
    return answers


def correct(answers: Sequence[AIMessage], atoms: Sequence[Atom]) -> list[bool]:
    return [
        numbers_match(parse_number(a.text), parse_number(x.reference))
        for a, x in zip(answers, atoms, strict=True)
    ]


def members(atom: Atom) -> tuple[str, str, str]:
    return atom.prompt, atom.expression, atom.reference


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
    """Each step answered as the store routes it: by the nearest cluster's best adapter
    when there is one and (``gate``) the base model is unsure of its answer or the
    adapter takes every step routed to it (``route_all``, as the graph routes), otherwise
    by the base model (whose answers are reused)."""
    routes: list[str | None] = []
    for atom, base in zip(atoms, base_answers, strict=True):
        found = store.route(atom.prompt, tag=atom.tag if by_tag else None)
        use = found and (not gate or found[0].route_all or store.unsure(base))
        routes.append(found[0].id if use else None)
    answers = list(base_answers)
    for adapter_id in sorted({r for r in routes if r is not None}):
        # One adapter at a time: the store keeps at most max_loaded in memory, and a
        # method may route to more (loading them all first evicted the earliest).
        chosen = [i for i, r in enumerate(routes) if r == adapter_id]
        loaded = store.load(adapter_id)
        adapted = answer_all(store.model, [atoms[i] for i in chosen], [loaded] * len(chosen))
        for i, message in zip(chosen, adapted, strict=True):
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


def record(result: SeedResult, method: MethodResult) -> None:
    """Keep ``method``'s result and print it at once, so a stopped run still has it."""
    result.methods[method.name] = method
    base = np.array(result.methods["Base"].right)
    right = np.array(method.right)
    print(
        f"  {method.name}: EM {right.mean():.3f} (where base right {right[base].mean():.3f}, "
        f"where base wrong {right[~base].mean():.3f}), {method.adapters} adapters, "
        f"{method.routed} routed, {method.train_seconds:.0f} s training"
    )


def run_seed(
    data: Path, seed: int, settings: Settings, chat: ChatSage, embeddings: Embeddings, work: Path
) -> SeedResult:
    stream_tasks, heldout_tasks = split_problems(data, seed, settings.stream, settings.heldout)
    stream, heldout = atoms_of(stream_tasks), atoms_of(heldout_tasks)
    started = time.perf_counter()
    stream_right = correct(answer_all(chat, stream), stream)
    base_answers = answer_all(chat, heldout)
    failures = [a for a, ok in zip(stream, stream_right, strict=True) if not ok]
    passes = [a for a, ok in zip(stream, stream_right, strict=True) if ok]
    print(
        f"seed {seed}: {len(stream)} stream steps ({len(failures)} failed), "
        f"{len(heldout)} held-out steps; base answers in {time.perf_counter() - started:.0f} s"
    )
    result = SeedResult(seed, len(stream), len(failures), [a.reference for a in heldout])
    record(
        result, MethodResult("Base", correct(base_answers, heldout), [a.text for a in base_answers])
    )
    started = time.perf_counter()
    agent = SageAgent(
        work / f"{seed}-sage.db",
        chat,
        embeddings=embeddings,
        decomposer=annotation_decomposer,
        buffer_config=settings.buffer,
        store_config=settings.store,
    )
    agent.configure(adaptation=AdaptationBudget(settings.adapt_seconds))
    summary = agent.run(stream_tasks, train=True)
    result.sage_summary = {
        k: v for k, v in summary.__dict__.items() if k not in ("threads", "errors")
    }
    every = "SAGE (every routed step)"
    record(result, routed_answers(every, agent.store, heldout, base_answers, True, gate=False))
    record(result, routed_answers("SAGE", agent.store, heldout, base_answers, True, gate=True))
    print(
        f"  SAGE: {summary.clusters} clusters, {summary.adapters_trained} adapters, "
        f"{summary.retry_success} retries fixed, {time.perf_counter() - started:.0f} s"
    )
    # Every baseline trains as long as SAGE did, shared among its clusters.
    budget, rate = training_rate(agent.store)
    budget = max(budget, 1.0)

    vectors = np.asarray(embeddings.embed_documents([a.prompt for a in failures]))
    minimum = settings.store.min_train_samples
    tags = Counter(a.tag for a in failures)
    big_tags = sorted(t for t, n in tags.items() if n >= minimum)

    def baseline(name: str, labels: np.ndarray) -> None:
        started = time.perf_counter()
        clusters = [
            cluster_of(
                int(label) + 1,
                MIXED_TAG,
                [members(failures[i]) for i in np.flatnonzero(labels == label)],
                vectors[labels == label],
            )
            for label in sorted(set(labels.tolist()) - {-1})
        ]
        trained = [c for c in clusters if c.size >= minimum][: settings.max_clusters]
        share = budget / max(1, len(trained))
        store = adapt_on_clusters(
            chat,
            embeddings,
            work / f"{seed}-{name.split()[0].lower()}-{len(result.methods)}",
            fixed_store_config(settings, share, rate),
            clusters,
            passes,
            lambda _a: MIXED_TAG,
            2 * share,
            settings.max_clusters,
        )
        record(result, routed_answers(name, store, heldout, base_answers, by_tag=False, gate=False))
        print(f"  {name}: {len(clusters)} clusters, {time.perf_counter() - started:.0f} s")

    baseline("LoRA (all failures)", np.zeros(len(failures), dtype=int))
    k = max(1, len(big_tags))
    baseline("CA-LoRA (KMeans)", KMeans(k, n_init=10, random_state=seed).fit_predict(vectors))
    baseline(
        "CA-LoRA (HDBSCAN)",
        hdbscan.HDBSCAN(
            min_cluster_size=settings.buffer.min_cluster_size,
            min_samples=settings.buffer.min_samples,
            allow_single_cluster=True,
        ).fit_predict(vectors),
    )

    started = time.perf_counter()
    per_tag = [
        cluster_of(
            i + 1,
            tag,
            [members(a) for a in failures if a.tag == tag],
            vectors[[a.tag == tag for a in failures]],
        )
        for i, tag in enumerate(big_tags)
    ]
    name = "LoRA Store (no buffer)"
    store = adapt_on_clusters(
        chat,
        embeddings,
        work / f"{seed}-store",
        settings.store,
        per_tag,
        passes,
        lambda a: a.tag,
        budget / max(1, len(per_tag[: settings.max_clusters])),
        settings.max_clusters,
    )
    record(result, routed_answers(name, store, heldout, base_answers, by_tag=True, gate=True))
    print(f"  {name}: {len(per_tag)} clusters, {time.perf_counter() - started:.0f} s")

    result.retention = retention(agent.store, heldout, base_answers)
    result.problem_em, result.problems_scored = problem_level(agent, heldout_tasks)
    result.trigger = trigger_separation(heldout, base_answers, embeddings)
    return result


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
        unsure = [store.unsure(base_answers[i]) for i in indices]
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


# the report


def mean_spread(values: Sequence[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def atomic_table(results: Sequence[SeedResult]) -> list[str]:
    lines = [
        "| method | EM | MAE | MSE | NER | EM where base right | EM where base wrong "
        "| adapters | training s | routed steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_right = [np.array(r.methods["Base"].right) for r in results]
    for name in METHODS:
        runs = [r.methods[name] for r in results if name in r.methods]
        if not runs:
            continue
        metrics = [
            math_metrics(m.answers, r.references) for m, r in zip(runs, results, strict=True)
        ]
        kept = [np.array(m.right)[b].mean() for m, b in zip(runs, base_right, strict=True)]
        fixed = [np.array(m.right)[~b].mean() for m, b in zip(runs, base_right, strict=True)]
        lines.append(
            f"| {name} | {mean_spread([m.em for m in metrics])} "
            f"| {mean_spread([m.mae or 0.0 for m in metrics])} "
            f"| {np.mean([m.mse or 0.0 for m in metrics]):.3g} "
            f"| {mean_spread([m.ner for m in metrics])} "
            f"| {mean_spread(kept)} | {mean_spread(fixed)} "
            f"| {np.mean([m.adapters for m in runs]):.1f} "
            f"| {np.mean([m.train_seconds for m in runs]):.0f} "
            f"| {np.mean([m.routed for m in runs]):.1f} |"
        )
    return lines


def heldout_tags(path: Path, result: SeedResult, settings: Settings) -> list[str] | None:
    """The operator signature of each held-out step of ``result``'s seed, rebuilt from the
    data (the same seeded split); None when the data gives other steps than the run had."""
    _, heldout = split_problems(path, result.seed, settings.stream, settings.heldout)
    atoms = atoms_of(heldout)
    if [a.reference for a in atoms] != result.references:
        return None
    return [a.tag for a in atoms]


def methods_in_every_seed(results: Sequence[SeedResult]) -> list[str]:
    """The methods every seed ran, in the tables' order (a seed may stop after some)."""
    return [n for n in METHODS if all(n in r.methods for r in results)]


def operator_table(results: Sequence[SeedResult], tags: Sequence[Sequence[str]]) -> list[str]:
    """Right held-out steps per operator signature, summed over the seeds: where each
    method's exact match comes from (one-operator signatures; the rest pooled)."""
    names = methods_in_every_seed(results)
    pooled = [[t if t in OPERATORS else "other" for t in seed_tags] for seed_tags in tags]
    lines = [
        "| operator | steps | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for operator in (*OPERATORS, "other"):
        steps = sum(t.count(operator) for t in pooled)
        if not steps:
            continue
        right = [
            sum(
                ok
                for r, seed_tags in zip(results, pooled, strict=True)
                for ok, t in zip(r.methods[name].right, seed_tags, strict=True)
                if t == operator
            )
            for name in names
        ]
        lines.append(f"| `{operator}` | {steps} | " + " | ".join(map(str, right)) + " |")
    return lines


def change_table(results: Sequence[SeedResult]) -> list[str]:
    """What each method did with the held-out steps, summed over the seeds: of the steps
    the base model answers wrong, how many it left with the base answer (no adapter
    routed, or the gate kept it), changed to another wrong answer, or fixed; of those it
    answers right, how many it lost. Separates reach (routing) from what adapters fix."""
    names = [n for n in methods_in_every_seed(results) if n != "Base"]
    lines = [
        "| method | base wrong | left as the base answered | changed, still wrong | fixed "
        "| base right | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        wrong = left = fixed = right = lost = 0
        for r in results:
            base, method = r.methods["Base"], r.methods[name]
            for ok, answer, base_ok, base_answer in zip(
                method.right, method.answers, base.right, base.answers, strict=True
            ):
                if base_ok:
                    right += 1
                    lost += not ok
                else:
                    wrong += 1
                    fixed += ok
                    left += answer == base_answer
        lines.append(
            f"| {name} | {wrong} | {left} | {wrong - left - fixed} | {fixed} | {right} | {lost} |"
        )
    return lines


def wilcoxon_line(results: Sequence[SeedResult]) -> str:
    """Signed-rank test on the held-out steps, SAGE against the base model, all seeds
    pooled (per step: right = 1, wrong = 0; steps where both agree drop out)."""
    base = [x for r in results for x in r.methods["Base"].right]
    sage = [x for r in results for x in r.methods["SAGE"].right]
    pairs = list(zip(sage, base, strict=True))
    differing = sum(s != b for s, b in pairs)
    if differing == 0:
        return "Wilcoxon signed-rank, SAGE vs base: no held-out step differs, no test."
    test = wilcoxon(np.array(sage, float), np.array(base, float), zero_method="wilcox")
    return (
        f"Wilcoxon signed-rank, SAGE vs base over {len(base)} held-out steps "
        f"({differing} differ; SAGE right on {sum(s > b for s, b in pairs)}, "
        f"base on {sum(b > s for s, b in pairs)}): "
        f"statistic {test.statistic:.1f}, p = {test.pvalue:.3g}."
    )


def plots(results: Sequence[SeedResult], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = methods_in_every_seed(results)
    ems = [[np.mean(r.methods[n].right) for r in results] for n in names]
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.bar(range(len(names)), [np.mean(e) for e in ems], yerr=[np.std(e) for e in ems])
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("held-out step EM")
    figure.tight_layout()
    figure.savefig(folder / "atomic_em.png", dpi=110)
    plt.close(figure)
    made = ["atomic_em.png"]

    trigger = next((r.trigger for r in results if r.trigger), None)
    if trigger:
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        fpr, tpr = trigger["roc"]
        left.plot(fpr, tpr, label=f"anomaly score (AUC {trigger['anomaly_auc']:.2f})")
        left.plot([0, 1], [0, 1], ls=":", c="grey")
        left.set_xlabel("false positive rate")
        left.set_ylabel("true positive rate")
        left.legend(fontsize=8)
        sweep = trigger["threshold_sweep"]
        right.plot([s["threshold"] for s in sweep], [s["fpr"] for s in sweep], label="FPR")
        right.plot([s["threshold"] for s in sweep], [s["tpr"] for s in sweep], label="TPR")
        right.set_xlabel("anomaly threshold")
        right.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(folder / "trigger.png", dpi=110)
        plt.close(figure)
        made.append("trigger.png")
    return made


def report(
    results: Sequence[SeedResult],
    settings: Settings,
    out: Path,
    tags: Sequence[Sequence[str]] | None = None,
) -> str:
    seeds = ", ".join(str(r.seed) for r in results)
    commands = sorted({r.command for r in results})
    seconds = sum(r.seconds for r in results)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    made = plots(results, out.parent / "results")
    lines = [
        "# Does it adapt?",
        "",
        "Commands (one per seed, merged):" if len(commands) > 1 else "Command:",
        "",
        *(f"    {c}" for c in commands),
        "",
        f"Machine: {machine}; {seconds / 60:.0f} minutes in all. Model: the embedded "
        f"SmolLM2-135M-Instruct; embedder: all-MiniLM-L6-v2. Seeds: {seeds}. Per seed "
        f"{settings.stream} GSM8K problems streamed, {settings.heldout} held out (disjoint); "
        f"means ± standard deviation over the seeds. What each method is and how it is "
        f"scored: the docstring of `benchmarks/bench_adapt.py`.",
        "",
        "## Atomic steps (references substituted)",
        "",
        f"Stream steps per seed: {mean_spread([r.stream_atoms for r in results], 0)} "
        f"({mean_spread([r.failures for r in results], 0)} answered wrong by the base "
        f"model); held-out steps: {mean_spread([len(r.references) for r in results], 0)}.",
        "",
        *atomic_table(results),
        "",
        wilcoxon_line(results),
        "",
        "![held-out step EM](results/atomic_em.png)",
        "",
        "Held-out steps each method changed, all seeds (an answer the same as the base "
        "model's was not routed to an adapter, kept by the gate, or answered alike):",
        "",
        *change_table(results),
        "",
        *(
            [
                "Right held-out steps per operator, all seeds (a step's operator signature "
                "from its calculator annotation; `other`: two operators or none):",
                "",
                *operator_table(results, tags),
                "",
            ]
            if tags is not None
            else []
        ),
        "## Problems (the model's own earlier answers, at most three steps)",
        "",
        "| method | final-answer EM | problems |",
        "|---|---|---|",
    ]
    for name in ("Base", "SAGE"):
        values = [r.problem_em[name] for r in results if name in r.problem_em]
        if values:
            lines.append(
                f"| {name} | {mean_spread(values)} "
                f"| {mean_spread([r.problems_scored for r in results], 0)} |"
            )
    lines += ["", "## SAGE on the stream", "", "| seed | " + " | ".join(SUMMARY_KEYS) + " |"]
    lines.append("|---" * (len(SUMMARY_KEYS) + 1) + "|")
    for r in results:
        lines.append(
            f"| {r.seed} | " + " | ".join(_cell(r.sage_summary.get(k)) for k in SUMMARY_KEYS) + " |"
        )
    lines += ["", "## Trigger: right vs wrong base answers on the held-out steps", ""]
    for r in results:
        if not r.trigger:
            continue
        t = r.trigger
        lines += [
            f"Seed {r.seed}: {t['n_in']} right (in-distribution), {t['n_out']} wrong "
            f"(out-of-distribution); anomaly-score AUC {t['anomaly_auc']:.3f}.",
            "",
            "| metric | AUC | false positive rate at 0.5 |",
            "|---|---|---|",
            *(f"| {m} | {v['auc']:.3f} | {v['fpr']:.3f} |" for m, v in t["metrics"].items()),
            "",
            "Weight sweep (weight of the logits margin, the rest shared equally): "
            + ", ".join(f"{s['lm_weight']}: AUC {s['auc']:.3f}" for s in t["weight_sweep"])
            + ".",
            "",
        ]
    if "trigger.png" in made:
        lines += ["![trigger ROC and threshold sweep](results/trigger.png)", ""]
    lines += [
        "## Retention: SAGE adapters on held-out steps the base model answers right",
        "",
        "Each adapter on all of its tag's held-out steps that the base model answers right, "
        "and as routing uses it: only on the steps whose base answer is unsure "
        "(`RouterConfig.route_below`), the others keeping their right base answer.",
        "",
        "| seed | adapter | tag | steps | EM, every step (base 1.000) | unsure steps "
        "| EM, as routed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines += [
            f"| {r.seed} | {x['adapter']} | `{x['tag']}` | {x['passes']} | {x['em']:.3f} "
            f"| {x['unsure']} | {x['em_gated']:.3f} |"
            for x in r.retention
        ]
    return "\n".join(lines) + "\n"


SUMMARY_KEYS = (
    "steps",
    "step_em_first",
    "step_em",
    "triggers",
    "clusters",
    "adapters_trained",
    "retry_success",
    "adapt_s",
    "wall_s",
)


def _cell(value: object) -> str:
    """Rates to three decimals, seconds as whole numbers (not 1.07e+03)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--stream", type=int, default=100, help="stream problems per seed")
    parser.add_argument("--heldout", type=int, default=40, help="held-out problems per seed")
    parser.add_argument(
        "--search-seconds",
        type=float,
        default=RUN_OPTIONS["budget"],
        help="time budget of one LoRA search (default: the CLI's)",
    )
    parser.add_argument(
        "--adapt-seconds",
        type=float,
        default=RUN_OPTIONS["adapt_seconds"],
        help="SAGE: adaptation seconds for the whole stream (default: the CLI's)",
    )
    parser.add_argument(
        "--max-clusters",
        type=int,
        default=None,
        help="train only the largest N clusters of each baseline (default: all)",
    )
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="SAGE: failures a tag collects before its first clustering (default 25)",
    )
    parser.add_argument(
        "--min-cluster",
        type=int,
        default=None,
        help="smallest cluster the LoRA Store trains on, for every method (default 12)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: one seed, few problems, one short trial"
    )
    parser.add_argument(
        "--out", type=Path, default=DOCS / "results.md", help="plots go to results/ beside it"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run no seed: remake the report from the seeds saved with these settings",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file at once
    store = StoreConfig().replace(max_seconds=args.search_seconds)
    buffer = BufferConfig()
    if args.buffer_size is not None:
        buffer = replace(buffer, buffer_size=args.buffer_size)
    if args.min_cluster is not None:
        store = store.replace(min_train_samples=args.min_cluster)
    seeds = [int(s) for s in args.seeds.split(",")]
    max_clusters = args.max_clusters
    if args.quick:
        seeds, args.stream, args.heldout, max_clusters = seeds[:1], 10, 2, 1
        store = store.replace(
            train_size=16,
            failure_repeats=1,
            epochs=(1,),
            max_trials=1,
            n_random=1,
            top_k=1,
            min_train_samples=4,
            val_variants=1,
            canary_size=4,
        )
        # Small enough that a 10-problem stream (about 8 failures of the commonest
        # operator) fills a tag's buffer, clusters and trains.
        buffer = BufferConfig(buffer_size=4, min_cluster_size=3, recluster_every=1)
    settings = Settings(
        args.stream,
        args.heldout,
        store,
        buffer,
        args.search_seconds,
        args.adapt_seconds,
        max_clusters,
    )
    seeds_folder = args.out.parent / "results" / "seeds"
    if not args.report_only:
        chat, embeddings = ChatSage(), default_embeddings()
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        with tempfile.TemporaryDirectory() as work:
            for seed in seeds:
                started = time.perf_counter()
                result = run_seed(args.data, seed, settings, chat, embeddings, Path(work))
                result.seconds, result.command = time.perf_counter() - started, command
                save_seed(seeds_folder, result, settings)
    results = load_seeds(seeds_folder, settings)
    if not results:
        raise SystemExit(f"no seed saved in {seeds_folder} with these settings")
    tags = [heldout_tags(args.data, r, settings) for r in results]
    complete = [t for t in tags if t is not None]
    if len(complete) < len(tags):
        print(f"{args.data} gives other held-out steps than the saved seeds: no operator table")
    text = report(results, settings, args.out, complete if len(complete) == len(tags) else None)
    print("\n".join(atomic_table(results)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out} (seeds {', '.join(str(r.seed) for r in results)})")


if __name__ == "__main__":
    main()
