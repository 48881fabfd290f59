"""What each task family costs: prompt length, training, ranking and answering rates, and
the base model's accuracy, per family, on the embedded model.

    python benchmarks/bench_tasks.py --data-dir ../shared/data [--items 64] [--pairs 64]

For GSM8K's atomic steps, PubMedQA and each BIG-Bench Hard task beside the clone:
``--items`` items in bench_adapt's seeded order (seed 0; GSM8K: the first steps)
answered by the base model in batches (items/s and accuracy as the family judges),
``--pairs`` of them as (prompt, target)
pairs trained one epoch with the store's default LoRA configuration (samples/s) and read
teacher-forced as the search ranks trials (pairs/s). A PubMedQA prompt carries its
abstract, a few hundred tokens where an atomic step's is about 25: this is what it costs
a search of the same seconds. The training's memory is the process's peak resident size
while it trains, less its size before (freed memory given back first), sampled every
20 ms. Writes benchmarks/results/tasks.md.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapt_methods import answer_all, atoms_of, correct, split_problems
from common import results_header, write_results

from sage_agent import ChatSage
from sage_agent.records import TrainingPair
from sage_agent.training.batches import release_freed_memory
from sage_agent.training.trainer import LoRARun, LoRATrainConfig
from sage_agent.training.validation import teacher_forced

RESULTS = Path(__file__).parent / "results"
FILES = [
    "gsm8k/train.jsonl",
    "pubmedqa/pqal_train.jsonl",
    *(
        f"bbh/{task}.jsonl"
        for task in (
            "boolean_expressions",
            "object_counting",
            "word_sorting",
            "navigate",
            "web_of_lies",
            "sports_understanding",
            "date_understanding",
            "multistep_arithmetic_two",
            "dyck_languages",
        )
    ),
]


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) * 1024


def added_peak_memory(work: Callable[[], object]) -> int:
    """Bytes the process's resident size rose to at most above its size before ``work``."""
    release_freed_memory()
    before = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "tasks.md")
    args = parser.parse_args()
    chat = ChatSage()
    tokenizer = chat.tokenizer
    rows = []
    for name in FILES:
        path = args.data_dir / name
        if not path.is_file():
            print(f"{path}: not found, left out")
            continue
        tasks, _ = split_problems(path, 0, args.items, 0)
        atoms = atoms_of(tasks)[: args.items]
        family = atoms[0].family
        tokens = [len(tokenizer(a.prompt)["input_ids"]) for a in atoms]
        started = time.perf_counter()
        answers = answer_all(chat, atoms)
        answer_s = time.perf_counter() - started
        accuracy = sum(correct(answers, atoms)) / len(atoms)
        pairs = [TrainingPair(a.prompt, a.reference) for a in atoms[: args.pairs]]
        run = LoRARun(chat, "cost", pairs, LoRATrainConfig(epochs=1))
        memory = added_peak_memory(lambda run=run: run.train(run.steps_per_epoch))
        train_rate = run.samples / run.seconds
        started = time.perf_counter()
        teacher_forced(chat, "cost", pairs)
        rank_rate = len(pairs) / (time.perf_counter() - started)
        chat.delete_adapter("cost")
        rows.append(
            f"| {family} | {sum(tokens) / len(tokens):.0f} | {max(tokens)} | "
            f"{len(atoms) / answer_s:.1f} | {train_rate:.1f} | {memory / 2**30:.1f} | "
            f"{rank_rate:.1f} | {accuracy:.1%} | {len(atoms)} |"
        )
        print(rows[-1], flush=True)
    lines = results_header(
        "What each task family costs",
        f"Model: the embedded SmolLM2-135M-Instruct. {args.items} items of each file in "
        f"bench_adapt's seed-0 order (GSM8K: atomic steps); training: {args.pairs} pairs, "
        "one epoch, rank 16, batch 16, bf16 where the CPU has it; ranking: the same pairs "
        "teacher-forced.",
    )
    lines += [
        "| family | prompt tokens, mean | prompt tokens, max | answered items/s | "
        "trained samples/s | training memory, GiB | ranked pairs/s | base accuracy | items |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
