"""More training pairs for a small cluster: variants of its own steps, labelled by the
verifier.

A variant keeps a step's expression shape and puts random numbers of the same length
in it ("238+17" may become "604+52"); the verifier computes the new reference. A cluster
of a few dozen failures thus trains on several times as many atoms of exactly its kind.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from sage_agent.answer_formats import AnswerFormat, number_answer
from sage_agent.records import TrainingPair
from sage_agent.verifier import ExpressionError, Verifier, arithmetic_verifier

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def expression_variant(expression: str, rng: random.Random) -> str:
    """The expression with each number replaced by a random one of the same digit counts
    (a leading digit stays non-zero, except for a single digit)."""

    def same_shape(match: re.Match[str]) -> str:
        whole, _, fraction = match.group(0).partition(".")
        low = 10 ** (len(whole) - 1) if len(whole) > 1 else 1
        new = str(rng.randint(low, 10 ** len(whole) - 1))
        if fraction:
            new += "." + str(rng.randint(0, 10 ** len(fraction) - 1)).zfill(len(fraction))
        return new

    return _NUMBER.sub(same_shape, expression)


def augment_pairs(
    examples: Sequence[tuple[TrainingPair, str]],
    per_example: int,
    rng: random.Random,
    verifier: Verifier = arithmetic_verifier,
    answer: AnswerFormat = number_answer,
) -> list[TrainingPair]:
    """``per_example`` verifier-labelled variants of each (pair, expression) whose prompt
    contains its expression, their answers written by ``answer``; variants the verifier
    cannot compute are skipped."""
    variants = []
    for pair, expression in examples:
        if not expression or expression not in pair.prompt:
            continue
        for _ in range(per_example):
            new_expression = expression_variant(expression, rng)
            try:
                reference = verifier(new_expression)
            except ExpressionError:
                continue
            variants.append(
                TrainingPair(
                    pair.prompt.replace(expression, new_expression),
                    answer(new_expression, reference),
                )
            )
    return variants
