"""The base model's best prompt: atomic-step wordings compared on the held-out steps of
bench_adapt.py, with no adapter.

    python benchmarks/bench_prompts.py --data ../shared/data/gsm8k/train.jsonl
        [--seeds 0] [--stream 100] [--heldout 40] [--out benchmarks/results/prompts.md]

The held-out steps are bench_adapt.py's for the same seed, stream and held-out sizes
(references substituted), so the best row here is the base figure SAGE's gain is
measured against.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapt_methods import Atom, atoms_of, split_problems
from common import results_header
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from sage_agent import ChatSage
from sage_agent.scoring.numeric import math_metrics
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT


def atomic(atom: Atom) -> list[BaseMessage]:
    return [HumanMessage(atom.prompt)]


def few_shot(atom: Atom) -> list[BaseMessage]:
    """Two worked examples in the equation format the adapters are trained on."""
    shots = []
    for expression, answer in (("12+7", "12 + 7 = 19"), ("6*8", "6 * 8 = 48")):
        shots += [HumanMessage(ATOMIC_PROMPT.format(expression=expression)), AIMessage(answer)]
    return [*shots, *atomic(atom)]


PROMPTS: dict[str, Callable[[Atom], list[BaseMessage]]] = {
    f'"{ATOMIC_PROMPT}" (the graph\'s)': atomic,
    "the same, empty system prompt": lambda a: [SystemMessage(""), *atomic(a)],
    'the same, system prompt "You are a calculator."': lambda a: [
        SystemMessage("You are a calculator."),
        *atomic(a),
    ],
    '"What is {expression}?"': lambda a: [HumanMessage(f"What is {a.expression}?")],
    '"{expression} ="': lambda a: [HumanMessage(f"{a.expression} =")],
    '"Calculate {expression}. Give only the final number, no words."': lambda a: [
        HumanMessage(f"Calculate {a.expression}. Give only the final number, no words.")
    ],
    "two worked examples, then the graph's": few_shot,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--stream", type=int, default=100)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "prompts.md"
    )
    args = parser.parse_args()
    chat = ChatSage().bind(max_tokens=ANSWER_MAX_TOKENS)
    lines = [
        *results_header(
            "The base model's prompts on the held-out atomic steps",
            "Model: the embedded SmolLM2-135M-Instruct, greedy, no adapter.",
        ),
        "| seed | steps | prompt | EM | NER |",
        "|---|---|---|---|---|",
    ]
    for seed in (int(s) for s in args.seeds.split(",")):
        _, heldout = split_problems(args.data, seed, args.stream, args.heldout)
        atoms = atoms_of(heldout)
        for name, build in PROMPTS.items():
            answers = chat.batch([build(a) for a in atoms])
            scores = math_metrics([a.text for a in answers], [a.reference for a in atoms])
            lines.append(f"| {seed} | {len(atoms)} | {name} | {scores.em:.3f} | {scores.ner:.3f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
