"""How far can training on GSM8K's own plans take the embedded model's planning?

    python benchmarks/bench_planner_training.py --data ../shared/data/gsm8k/train.jsonl
        [--train 512] [--epochs 2] [--rank 16] [--learning-rate 1e-3]
        [--out benchmarks/results/planner_training.md]

The most a planner adapter could learn from a stream, and more: one LoRA adapter trained
on the gold plans (``plans.gold_plan``: GSM8K's calculator annotations, as the store's
plan recipe writes them) of the first ``--train`` problems of the file, each a distinct
question in the planner's own prompt (``plans.plan_prompt``), where a stream's plan
cluster has a few dozen failures topped up with variants of them. After each epoch, and
for the base model first, the embedded SmolLM2-135M plans the held-out problems with a
gold plan (37 of lines 7201-7240, the ones bench_plan_stops reads) as the decomposer
does (``PLAN_STOP``, ``stop_repeated_line``): plans parsed, plan accuracy (the plan's
last step, computed by the verifier, is the gold answer) and the teacher-forced loss of
the gold plans. Training seconds and samples per second say what a planner search can
afford in its budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import PLANS_HELD_OUT, gold_plans, results_header

from sage_agent import ChatSage
from sage_agent.records import TrainingPair
from sage_agent.tasks.plans import (
    PLAN_MAX_TOKENS,
    PLAN_STOP,
    plan_matches,
    plan_prompt,
    plan_result,
)
from sage_agent.training.trainer import LoRARun, LoRATrainConfig
from sage_agent.training.validation import generate, teacher_forced


@dataclass(frozen=True)
class PlanScores:
    parsed: int
    right: int
    loss: float
    seconds: float
    """Of writing the plans."""


def plan_pairs(lines: list[str]) -> list[TrainingPair]:
    """(the planner's prompt, the gold plan) of each problem that has a gold plan."""
    return [
        TrainingPair(plan_prompt(task["question"]), gold)
        for task, gold in gold_plans(lines)
        if gold is not None
    ]


def score(chat: ChatSage, adapter: str | None, held: list[TrainingPair]) -> PlanScores:
    started = time.perf_counter()
    messages = generate(
        chat,
        adapter,
        [p.prompt for p in held],
        max_tokens=PLAN_MAX_TOKENS,
        stop=PLAN_STOP,
        stop_repeated_line=True,
    )
    seconds = time.perf_counter() - started
    return PlanScores(
        parsed=sum(plan_result(m.text) is not None for m in messages),
        right=sum(plan_matches(m.text, p.answer) for m, p in zip(messages, held, strict=True)),
        loss=teacher_forced(chat, adapter, held).loss,
        seconds=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train", type=int, default=512, help="first lines of the file trained on")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/planner_training.md"))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file at once
    lines = args.data.read_text().splitlines()
    train, held = plan_pairs(lines[: args.train]), plan_pairs(lines[PLANS_HELD_OUT])
    chat = ChatSage()
    chat.invoke("Hello", max_tokens=1)  # the weights load before anything is timed
    rows = [("base model", 0.0, 0.0, score(chat, None, held))]
    print(rows[-1])
    config = LoRATrainConfig(
        rank=args.rank,
        alpha=2 * args.rank,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=16,
    )
    run = LoRARun(chat, "planner", train, config)
    for epoch in range(1, args.epochs + 1):
        result = run.train(run.steps_per_epoch)
        rows.append(
            (
                f"adapter, epoch {epoch}",
                result.seconds,
                result.samples_per_second,
                score(chat, "planner", held),
            )
        )
        print(rows[-1])
    setting = (
        f"Training: the gold plans of {len(train)} problems (the first {args.train} lines of "
        f"the file, those whose annotations compute the answer), LoRA rank {args.rank}, "
        f"alpha {2 * args.rank}, learning rate {args.learning_rate:g}, batch 16, all layers. "
        f"Held out: the {len(held)} problems of lines "
        f"{PLANS_HELD_OUT.start + 1}-{PLANS_HELD_OUT.stop} with a gold plan. "
        "The embedded SmolLM2-135M, greedy, the planner's prompt."
    )
    table = [
        "| model | training s (total) | samples/s | plans parsed | plan accuracy "
        "| gold-plan loss | s to write the plans |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, seconds, rate, scores in rows:
        table.append(
            f"| {name} | {seconds:.0f} | {rate:.2f} | {scores.parsed}/{len(held)} "
            f"| {scores.right}/{len(held)} | {scores.loss:.3f} | {scores.seconds:.0f} |"
        )
    text = "\n".join([*results_header("Planner training on gold plans", setting), *table, ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
