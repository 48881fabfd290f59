"""Training volume: validation EM against the number of verifier-labelled training pairs
and the answer format, per training second.

    python benchmarks/bench_volume.py --data ../shared/data/gsm8k/train.jsonl
        [--tag +] [--formats equation,worked] [--runs 256x1,1024x1,4096x1]
        [--size 48] [--seed 0] [--out benchmarks/results/volume.md]

The first ``--size`` GSM8K atoms of ``--tag`` that the embedded model answers wrong
become a cluster, as in bench_formats. For each answer format and each training size, the
store's recipe (``build_recipe`` with that ``train_size``; the cluster's failures topped
up with verifier-labelled variants, no rehearsal) makes the pairs, and one LoRA
configuration (LoRATrainConfig's defaults) trains on them for the run's epochs (a run
"768x1" is 768 pairs seen once; "256x3" the same seconds on 256 pairs); then the adapter
answers the validation prompts (the held-out quarter of the cluster and 16 variants of
each, the same for every run) by greedy generation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_formats import failures_of
from common import cluster_of, results_header, write_results

from sage_agent import ChatSage, default_embeddings
from sage_agent.store.config import RecipeConfig
from sage_agent.store.recipe import build_recipe
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS
from sage_agent.training.trainer import LoRARun, LoRATrainConfig
from sage_agent.training.validation import evaluate

RESULTS = Path(__file__).parent / "results"
VAL_VARIANTS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tag", default="+")
    parser.add_argument("--formats", default="equation,worked")
    parser.add_argument(
        "--runs", default="256x1,1024x1,4096x1", help="training pairs x epochs, comma-separated"
    )
    parser.add_argument("--size", type=int, default=48, help="failures in the cluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "volume.md")
    args = parser.parse_args()
    chat, embeddings = ChatSage(max_tokens=ANSWER_MAX_TOKENS), default_embeddings()
    failures = failures_of(chat, args.data, args.tag, args.size, args.seed)
    vectors = np.asarray(embeddings.embed_documents([f[0] for f in failures]))
    cluster = cluster_of(1, args.tag, failures, vectors)
    rows = []
    for answer_format in args.formats.split(","):
        for size, epochs in (map(int, run.split("x")) for run in args.runs.split(",")):
            config = RecipeConfig(
                answer_format=answer_format, train_size=size, val_variants=VAL_VARIANTS
            )
            recipe = build_recipe(cluster, config, min_train_samples=8, seed=args.seed)
            base = evaluate(chat, None, recipe.validation).exact_match
            name = f"volume-{answer_format}-{size}x{epochs}"
            run = LoRARun(chat, name, recipe.train, LoRATrainConfig(epochs=epochs))
            run.train(run.steps_per_epoch * epochs)
            em = evaluate(chat, name, recipe.validation).exact_match
            lift = 100 * (em - base) / (run.seconds / 60)
            rows.append(
                f"| {answer_format} | {len(recipe.train)} | {epochs} | {run.samples} | "
                f"{run.seconds:.0f} | {run.samples / run.seconds:.1f} | {em:.1%} | "
                f"{base:.1%} | {lift:.1f} |"
            )
            print(rows[-1], flush=True)
            chat.delete_adapter(name)
    lines = results_header(
        "Training volume",
        f"Cluster: the first {args.size} GSM8K atoms of `{args.tag}` that the embedded "
        "SmolLM2-135M answers wrong; one LoRA configuration (rank 16, alpha 32, learning "
        f"rate 1e-3, batch 16) per format and training size; validation: "
        f"{len(recipe.validation)} pairs (the held-out quarter of the cluster and "
        f"{VAL_VARIANTS} verifier-labelled variants of each), greedy generation. Lift per "
        "minute: validation EM points above the base model per minute of training.",
    )
    lines += [
        "| format | training pairs | epochs | samples seen | training s | samples/s | "
        "val EM | base val EM | lift per minute |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
