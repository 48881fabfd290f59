"""Answer formats: validation EM per training second, one adapter per format.

    python benchmarks/bench_formats.py --data ../shared/data/gsm8k/train.jsonl
        [--tags +,*] [--formats equation,worked] [--size 48] [--epochs 3] [--seed 0]

For each operator signature in ``--tags``, the first ``--size`` GSM8K atoms the embedded
model answers wrong become a cluster; the store's recipe (``build_recipe``, default
RecipeConfig but ``answer_format``) makes its training and validation pairs once per
format, with the same prompts and the same verifier-labelled variants: only the answers'
wording differs. One LoRA configuration (LoRATrainConfig's defaults: rank 16, alpha 32,
learning rate 1e-3) trains on each; after every epoch the adapter answers the validation
prompts by greedy generation and is scored on the number it writes. Writes
benchmarks/results/formats.md.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from common import cluster_of, gsm8k_steps, results_header

from sage_agent import ChatSage, default_embeddings
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.store.config import RecipeConfig
from sage_agent.store.recipe import build_recipe
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT
from sage_agent.training.trainer import LoRARun, LoRATrainConfig
from sage_agent.training.validation import evaluate

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    tag: str
    answer_format: str
    epoch: int
    seconds: float
    exact_match: float
    base: float
    answer_tokens: float
    example: str


def failures_of(chat: ChatSage, data: Path, tag: str, size: int, seed: int) -> list:
    """(prompt, expression, reference) of the first ``size`` atoms of ``tag`` answered wrong."""
    steps = (s for s in gsm8k_steps(data, seed) if s.tag == tag)
    failures: list[tuple[str, str, str]] = []
    while len(failures) < size:
        chunk = [next(steps) for _ in range(16)]
        prompts = [ATOMIC_PROMPT.format(expression=s.expression) for s in chunk]
        for step, prompt, message in zip(chunk, prompts, chat.batch(prompts), strict=True):
            if not numbers_match(parse_number(message.text), parse_number(step.reference)):
                failures.append((prompt, step.expression, step.reference))
    return failures[:size]


def measure(chat: ChatSage, embeddings, args: argparse.Namespace, tag: str) -> list[Row]:
    failures = failures_of(chat, args.data, tag, args.size, args.seed)
    vectors = np.asarray(embeddings.embed_documents([f[0] for f in failures]))
    cluster = cluster_of(1, tag, failures, vectors)
    rows = []
    for answer_format in args.formats.split(","):
        recipe = build_recipe(
            cluster, RecipeConfig(answer_format=answer_format), min_train_samples=8, seed=args.seed
        )
        base = evaluate(chat, None, recipe.validation).exact_match
        tokens = np.mean([len(chat.tokenizer(p.answer)["input_ids"]) for p in recipe.train])
        name = f"format-{answer_format}"
        run = LoRARun(chat, name, recipe.train, LoRATrainConfig(epochs=args.epochs))
        for epoch in range(1, args.epochs + 1):
            run.train(run.steps_per_epoch)
            em = evaluate(chat, name, recipe.validation).exact_match
            rows.append(
                Row(
                    tag, answer_format, epoch, run.seconds, em, base, tokens, recipe.train[0].answer
                )
            )
            print(
                f"{tag} {answer_format} epoch {epoch}: {run.seconds:.0f} s, val EM {em:.1%} "
                f"(base {base:.1%})",
                flush=True,
            )
        chat.delete_adapter(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tags", default="+,*")
    parser.add_argument("--formats", default="equation,worked")
    parser.add_argument("--size", type=int, default=48, help="failures in each cluster")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chat, embeddings = ChatSage(max_tokens=ANSWER_MAX_TOKENS), default_embeddings()
    started = time.perf_counter()
    rows = [row for tag in args.tags.split(",") for row in measure(chat, embeddings, args, tag)]
    lines = results_header(
        "Answer formats",
        f"Clusters: the first {args.size} GSM8K atoms per operator signature that the "
        "embedded SmolLM2-135M answers wrong; one LoRA configuration (rank 16, alpha 32, "
        f"learning rate 1e-3, batch 16) per format; {time.perf_counter() - started:.0f} s "
        "in all. Validation EM by greedy generation on the recipe's validation pairs (the "
        "held-out quarter of the cluster and verifier-labelled variants of it). Lift per "
        "minute: validation EM points above the base model per minute of training.",
    )
    lines += [
        "| tag | format | example answer | answer tokens | epochs | training s | val EM | "
        "base val EM | lift per minute |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r.tag}` | {r.answer_format} | `{r.example}` | {r.answer_tokens:.1f} | {r.epoch} | "
        f"{r.seconds:.0f} | {r.exact_match:.1%} | {r.base:.1%} | "
        f"{100 * (r.exact_match - r.base) / (r.seconds / 60):.1f} |"
        for r in rows
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "formats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2 :]))


if __name__ == "__main__":
    main()
