"""Verifier-labelled variants of a cluster's steps."""

from __future__ import annotations

import random
import re

import pytest

from sage_agent import evaluate_expression, parse_number
from sage_agent.augment import augment_pairs, equation_answer, expression_variant
from sage_agent.steps import operator_signature, spaced_expression
from sage_agent.trainer import TrainingPair


def test_variants_keep_the_shape() -> None:
    rng = random.Random(0)
    for expression in ("238+17", "3.5*12", "(40-8)/4", "1000-1", "0.25*80"):
        for _ in range(20):
            variant = expression_variant(expression, rng)
            assert operator_signature(variant) == operator_signature(expression)
            assert re.sub(r"\d", "9", variant) == re.sub(r"\d", "9", expression)
            for number in re.findall(r"\d+", variant):
                assert len(number) == 1 or number[0] != "0" or "." in variant


def test_variants_are_seeded() -> None:
    assert expression_variant("238+17", random.Random(3)) == expression_variant(
        "238+17", random.Random(3)
    )


def test_augment_pairs_labels_with_the_verifier() -> None:
    examples = [
        (TrainingPair("Compute 238+17. Reply with the number only.", "255"), "238+17"),
        (TrainingPair("Compute 9/3. Reply with the number only.", "3"), "9/3"),
        (TrainingPair("What is the capital of France?", "Paris"), None),  # no expression
        (TrainingPair("Compute 4*6.", "24"), "5*5"),  # expression not in the prompt
    ]
    variants = augment_pairs(examples, 5, random.Random(1))
    assert len(variants) == 10
    for pair in variants:
        expression = re.search(r"Compute (.+)\. Reply", pair.prompt).group(1)
        # references are written with at most 6 decimals
        assert parse_number(pair.answer) == pytest.approx(evaluate_expression(expression), abs=5e-7)


def test_answers_written_as_equations() -> None:
    assert spaced_expression("60+17") == "60 + 17"
    assert spaced_expression("3*-2") == "3 * -2"  # a unary minus stays attached
    assert spaced_expression("(40 -8)/4") == "(40 - 8) / 4"
    assert equation_answer("60+17", "77") == "60 + 17 = 77"
    assert parse_number(equation_answer("12-3*2", "6")) == 6  # the Trigger reads the result
    examples = [(TrainingPair("Compute 238+17. Reply with the number only.", "255"), "238+17")]
    (variant,) = augment_pairs(examples, 1, random.Random(1), answer=equation_answer)
    expression = re.search(r"Compute (.+)\. Reply", variant.prompt).group(1)
    left, right = expression.split("+")
    assert variant.answer == f"{left} + {right} = {int(left) + int(right)}"
