"""Verifier-labelled variants of a cluster's steps."""

from __future__ import annotations

import random
import re

import pytest

from sage_agent import evaluate_expression, parse_number
from sage_agent.answer_formats import MAX_WORKED_CHARACTERS, equation_answer, worked_answer
from sage_agent.augment import augment_pairs, expression_variant
from sage_agent.steps import operator_signature, spaced_expression
from sage_agent.trainer import TrainingPair
from sage_agent.verifier import arithmetic_verifier


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


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("238+417", "238+417=638+17=648+7=655"),
        ("27*8", "27*8=20*8+7*8=160+56=216"),
        ("16-3-4", "16-3-4=13-4=9"),
        ("(5+3)*2", "(5+3)*2=8*2=16"),
        ("216/8", "216/8=27"),
        ("7+8", "7+8=15"),
        ("1,234+5", "1,234 + 5 = 1239"),  # not plain: written as the equation
        ("999*999", "999*999=998001"),  # worked, it would not fit the answer's tokens
    ],
)
def test_worked_answer_splits_a_computation_into_steps(expression: str, answer: str) -> None:
    assert worked_answer(expression, arithmetic_verifier(expression)) == answer


def test_every_worked_answer_ends_with_its_result() -> None:
    rng = random.Random(0)
    shapes = ["12+345", "345-12", "12-345", "123*45", "4*567", "12+34-5", "(12+3)*4", "6.5*4"]
    for shape in shapes:
        for _ in range(50):
            expression = expression_variant(shape, rng)
            result = arithmetic_verifier(expression)
            answer = worked_answer(expression, result)
            assert parse_number(answer) == float(result), (expression, answer)
            assert len(answer) <= MAX_WORKED_CHARACTERS or answer.count("=") == 1, answer
            # every link of the chain has the expression's value
            for link in answer.split("="):
                assert evaluate_expression(link) == pytest.approx(float(result)), answer
