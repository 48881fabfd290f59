"""Does it adapt? SAGE against the paper's baselines on GSM8K, with the embedded model.

    python benchmarks/bench_adapt.py --data ../shared/data/gsm8k/train.jsonl
        [--seeds 0,1,2] [--stream 100] [--heldout 40] [--search-seconds 120]
        [--adapt-seconds 720] [--max-clusters N] [--buffer-size 25] [--min-cluster 12] [--quick]
        [--report-only] [--out benchmarks/results/adapt.md]

``--data`` may be a file of another task family (``sage_agent.tasks.families``): a
PubMedQA file runs the paper's Table 1 protocol for it, a BIG-Bench Hard task's file the
same stream / held-out protocol; each item is one step, judged by its family, and the
table adds Table 1's columns (accuracy, macro precision / recall / F1) and the confusion
of labels of the base model and SAGE. Give such a run its own ``--out``.

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

Each seed's results are saved to benchmarks/results/adapt/seeds/seed-N.json, and the
tables are made from every saved seed run with the same settings: ``--seeds 0``, then
``--seeds 1`` and ``--seeds 2`` (one at a time, in the background) make one 3-seed report,
and ``--report-only`` remakes it from the saved seeds without running one. Writes
benchmarks/results/adapt.md and its plots (benchmarks/results/adapt/); the report counts
each method's right held-out steps per operator too (the steps rebuilt from ``--data``).

The methods and records are in adapt_methods.py, the tables and plots in adapt_report.py.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hdbscan
import matplotlib
import numpy as np
from common import cluster_of
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from sklearn.cluster import KMeans

from sage_agent import BufferConfig, ChatSage, SageAgent, StoreConfig, default_embeddings
from sage_agent.app.cli import RUN_OPTIONS
from sage_agent.context import AdaptationBudget
from sage_agent.tasks.decompose import annotation_decomposer

matplotlib.use("Agg")


from adapt_methods import (
    Atom,
    MethodResult,
    SeedResult,
    Settings,
    adapt_on_clusters,
    answer_all,
    atoms_of,
    correct,
    fixed_store_config,
    members,
    mixed_tag,
    problem_level,
    record,
    retention,
    routed_answers,
    split_problems,
    training_rate,
    trigger_separation,
)
from adapt_report import atomic_table, heldout_tags, load_seeds, report, save_seed

RESULTS = Path(__file__).resolve().parent / "results"


def run_seed(
    data: Path,
    seed: int,
    settings: Settings,
    chat: ChatSage,
    embeddings: Embeddings,
    work: Path,
    baselines: bool = True,
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
    result.family = heldout[0].family if heldout else result.family
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
    if baselines:
        data_of_seed = (stream, failures, passes, heldout, base_answers)
        baselines_of_seed(seed, settings, chat, embeddings, work, data_of_seed, result, agent)
    result.retention = retention(agent.store, heldout, base_answers)
    result.problem_em, result.problems_scored = problem_level(agent, heldout_tasks)
    result.trigger = trigger_separation(heldout, base_answers, embeddings)
    return result


def baselines_of_seed(
    seed: int,
    settings: Settings,
    chat: ChatSage,
    embeddings: Embeddings,
    work: Path,
    data_of_seed: tuple[list[Atom], list[Atom], list[Atom], list[Atom], list[AIMessage]],
    result: SeedResult,
    agent: SageAgent,
) -> None:
    """The paper's baselines, trained for the seconds SAGE trained: ``data_of_seed`` is the
    stream, its failures and passes, the held-out steps and the base model's answers."""
    stream, failures, passes, heldout, base_answers = data_of_seed
    # Every baseline trains as long as SAGE did, shared among its clusters.
    budget, rate = training_rate(agent.store)
    budget = max(budget, 1.0)

    vectors = np.asarray(embeddings.embed_documents([a.prompt for a in failures]))
    minimum = settings.store.min_train_samples
    tags = Counter(a.tag for a in failures)
    big_tags = sorted(t for t, n in tags.items() if n >= minimum)

    mixed = mixed_tag(stream)

    def baseline(name: str, labels: np.ndarray) -> None:
        started = time.perf_counter()
        clusters = [
            cluster_of(
                int(label) + 1,
                mixed,
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
            lambda _a: mixed,
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
        help="SAGE: failures a tag collects before its first clustering (default "
        f"{BufferConfig().buffer_size})",
    )
    parser.add_argument(
        "--min-cluster",
        type=int,
        default=None,
        help="smallest cluster the LoRA Store trains on, for every method (default "
        f"{StoreConfig().min_train_samples})",
    )
    parser.add_argument(
        "--store-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a StoreConfig setting for every method, as a Python literal (e.g. "
        "warm_start=False: one lever off); may be repeated",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: one seed, few problems, one short trial"
    )
    parser.add_argument(
        "--sage-only",
        action="store_true",
        help="the base model and SAGE only: the four baselines train as long as SAGE each",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "adapt.md",
        help="the report; its plots and saved seeds go to the folder of its name beside it",
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
    for setting in args.store_set:
        name, _, value = setting.partition("=")
        store = store.replace(**{name.strip(): ast.literal_eval(value.strip())})
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
    seeds_folder = args.out.with_suffix("") / "seeds"
    if not args.report_only:
        chat, embeddings = ChatSage(), default_embeddings()
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        with tempfile.TemporaryDirectory() as work:
            for seed in seeds:
                started = time.perf_counter()
                result = run_seed(
                    args.data, seed, settings, chat, embeddings, Path(work), not args.sage_only
                )
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
