"""Answers in steps: how much training a family's steps need before they pay.

    python benchmarks/bench_steps.py --data ../shared/data/bbh/navigate.jsonl
        [--pairs 1024] [--checkpoints 256,512,1024] [--batch-size 16]
        [--learning-rate 1e-3] [--seed 0] [--out ...]

bench_adapt's BBH runs found that on a CPU without bf16 a search trains one or two
trials of a few dozen steps, and that the label tasks' adapters then do not write their
steps right. This measures what they would need: one LoRA configuration
(LoRATrainConfig's defaults but one epoch, and ``--batch-size`` and
``--learning-rate`` when given) trains on ``--pairs`` items the
family generates, each answer written in steps (``TaskFamily.in_steps``), and after
each checkpoint (samples seen) answers bench_adapt's held-out items of ``--seed`` (the
same 40 items its tables score) by greedy generation, capped at the family's answer cap.
"Answered" is the share of answers that name a label (or a number) at all.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapt_methods import split_problems
from common import results_header, write_results

from sage_agent import ChatSage
from sage_agent.records import TrainingPair
from sage_agent.tasks.families import family_of_task
from sage_agent.training.trainer import LoRARun, LoRATrainConfig
from sage_agent.training.validation import evaluate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=1024, help="generated training pairs")
    parser.add_argument("--checkpoints", default="256,512,1024", help="samples seen")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimiser step")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    _, heldout_tasks = split_problems(args.data, args.seed, 100, 40)
    family = family_of_task(heldout_tasks[0])
    if family.in_steps is None or family.generator is None:
        parser.error(f"{family.name} has no generator or no answers in steps")
    heldout = [TrainingPair(*family.item(t)) for t in heldout_tasks]
    train = [
        TrainingPair(p.prompt, family.in_steps(p.prompt, p.answer) or p.answer)
        for p in family.variants([], args.pairs, random.Random(args.seed))
    ]
    chat = ChatSage(max_tokens=family.max_tokens)

    def row(name: str, adapter: str | None, samples: int, seconds: float) -> str:
        found = evaluate(chat, adapter, heldout, max_tokens=family.max_tokens, judge=family.judge)
        said = Counter(family.answer_of(m.content) for m in found.messages)
        answered = 1 - said.pop(None, 0) / len(heldout)
        labels = ", ".join(f"{k} {v}" for k, v in sorted(said.items())) if family.labels else ""
        speed = f"{samples / seconds:.1f}" if seconds else ""
        text = (
            f"| {name} | {samples} | {seconds:.0f} | {speed} | {found.exact_match:.3f} | "
            f"{answered:.3f} | {labels} |"
        )
        print(text, flush=True)
        return text

    rows = [row("base model", None, 0, 0.0)]
    config = LoRATrainConfig(epochs=1, batch_size=args.batch_size, learning_rate=args.learning_rate)
    run = LoRARun(chat, "steps", train, config)
    for samples in sorted(int(c) for c in args.checkpoints.split(",")):
        run.train(math.ceil((samples - run.samples) / run.config.batch_size))  # steps
        rows.append(row("in steps", "steps", run.samples, run.seconds))
    chat.delete_adapter("steps")
    task = family.name.removeprefix("bbh:")
    lines = results_header(
        f"Answers in steps: {task}",
        f"{len(train)} generated {task} items with their answers in steps (example: "
        f"`{train[0].answer}`), one LoRA configuration (rank {config.rank}, alpha "
        f"{config.alpha:g}, learning rate {config.learning_rate:g}, batch "
        f"{config.batch_size}), one epoch; scored after each checkpoint on bench_adapt's 40 "
        f"held-out items of seed {args.seed}, greedy answers of at most "
        f"{family.max_tokens} tokens.",
    )
    lines += [
        "| adapter | samples seen | training s | samples/s | accuracy | answered | labels said |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(args.out or RESULTS / f"steps-{task}.md", lines)


if __name__ == "__main__":
    main()
