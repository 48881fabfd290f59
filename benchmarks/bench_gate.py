"""How well does the routing's confidence gate tell the base model's right answers from
its wrong ones, with no reference?

    python benchmarks/bench_gate.py --data ../shared/data/gsm8k/train.jsonl
        [--seeds 0,1] [--stream 40] [--out benchmarks/results/gate.md]

For each seed, the stream of bench_adapt.py (the same shuffle, the same atomic prompts)
is answered by the embedded model. Three reference-free signals are compared by ROC AUC
(right answers as positives): the log-probability of the answer's number
(``number_logprob``, what ``RouterConfig.route_below`` thresholds), the log-probability of
the whole answer, and the mean logits margin (the Trigger's ``lm`` signal). Then, per
threshold, the share of right and of wrong answers the gate would send to an adapter.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from adapt_methods import answer_all, atoms_of, correct, split_problems
from common import results_header
from sklearn.metrics import roc_auc_score

from sage_agent import ChatSage
from sage_agent.scoring.numeric import number_logprob

THRESHOLDS = (-0.5, -1.0, -1.5, -2.0)
NO_NUMBER = -1e9  # an answer without a number is as unsure as it gets


def signals(metadata: dict) -> dict[str, float]:
    tokens = metadata["logprobs"]["content"]
    number = number_logprob(tokens)
    return {
        "number log-probability": NO_NUMBER if number is None else number,
        "answer log-probability": sum(t["logprob"] for t in tokens),
        "mean logits margin": metadata["logits_margin_mean"] or 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--stream", type=int, default=40, help="problems per seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate.md")
    args = parser.parse_args()
    chat = ChatSage()
    lines = [
        *results_header(
            "Confidence gate: right vs wrong base answers, without a reference",
            "Model: the embedded SmolLM2-135M-Instruct. Steps: the atomic steps of "
            "bench_adapt.py's stream (references substituted).",
        ),
        "| seed | steps | base EM | signal | ROC AUC | "
        + " | ".join(f"routed at {t}: right / wrong" for t in THRESHOLDS)
        + " |",
        "|---" * (5 + len(THRESHOLDS)) + "|",
    ]
    for seed in (int(s) for s in args.seeds.split(",")):
        stream, _ = split_problems(args.data, seed, args.stream, 0)
        atoms = atoms_of(stream)
        answers = answer_all(chat, atoms)
        right = np.array(correct(answers, atoms))
        table = [signals(a.response_metadata) for a in answers]
        for name in table[0]:
            values = np.array([row[name] for row in table])
            # the routed shares only for the signal the gate thresholds
            cells = " | ".join(
                f"{np.mean(values[right] < t):.2f} / {np.mean(values[~right] < t):.2f}"
                if name == "number log-probability"
                else ""
                for t in THRESHOLDS
            )
            lines.append(
                f"| {seed} | {len(atoms)} | {right.mean():.3f} | {name} "
                f"| {roc_auc_score(right, values):.3f} | {cells} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
