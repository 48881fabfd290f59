"""Verifier-labelled variants of a cluster's steps."""

from __future__ import annotations

import random
import re

import pytest

from sage_agent import evaluate_expression, parse_number
from sage_agent.scoring.verifier import arithmetic_verifier
from sage_agent.tasks.plans import plan_result
from sage_agent.tasks.steps import operator_signature, spaced_expression
from sage_agent.training.augment import augment_pairs, expression_variant, plan_pairs, plan_variant
from sage_agent.training.formats import MAX_WORKED_CHARACTERS, equation_answer, worked_answer
from sage_agent.training.trainer import TrainingPair


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


TOM_ASKS = "Tom has 4 boxes of {} pens and gives away {} pens. How many pens are left?"
TOM = TOM_ASKS.format(16, 5)
TOM_PLAN = "1. 4 * 16 = 64\n2. 64 - 5 = 59"


def test_a_plan_variant_is_the_new_questions_plan() -> None:
    rng = random.Random(0)
    made = [plan_variant(TOM, TOM_PLAN, rng) for _ in range(30)]
    variants = [v for v in made if v is not None]
    assert len(variants) >= 20 and len(set(variants)) > 10
    for question, plan in variants:
        # 4 is a common constant and stays; 16 and 5 change, and the plan follows them
        boxes, pens, given = (int(n) for n in re.findall(r"\d+", question))
        assert boxes == 4 and 10 <= pens <= 99 and 1 <= given <= 9
        assert question == TOM_ASKS.format(pens, given)
        assert plan == f"1. 4 * {pens} = {4 * pens}\n2. {4 * pens} - {given} = {4 * pens - given}"
        assert plan_result(plan) == 4 * pens - given


@pytest.mark.parametrize(
    ("question", "plan"),
    [
        # 100 is not the question's and 400 x 0.25 makes it: an unannotated step
        (
            "Dan did 400 tasks at $0.25 and 5 at $2. How much more?",
            "1. 5 * 2 = 10\n2. 100 - 10 = 90",
        ),
        # 37 is neither the question's, nor an earlier result, nor a constant
        ("Ann has 15 apples. How many?", "1. 15 + 37 = 52"),
        ("Ann has 4 apples and 2 pears. How many?", "1. 4 + 2 = 6"),  # nothing to change
        ("Ann has 15 apples.", "no plan here"),
    ],
)
def test_no_variant_of_a_plan_it_cannot_explain(question: str, plan: str) -> None:
    rng = random.Random(0)
    assert all(plan_variant(question, plan, rng) is None for _ in range(10))


def test_fractions_of_the_question_stay_and_results_stay_whole() -> None:
    question = "A bus holds 200 people and carried 3/4 of them. How many rode?"
    rng = random.Random(1)
    for variant in filter(
        None, (plan_variant(question, "1. 3 / 4 * 200 = 150", rng) for _ in range(30))
    ):
        assert "3/4 of them" in variant[0]
        assert float(variant[1].rpartition("= ")[2]).is_integer()  # 3/4 of 201 is no variant


def test_plan_pairs_change_the_question_not_the_examples_before_it() -> None:
    prompt = f"Problem: Ravi reads 16 pages.\n1. 16 * 2 = 32\n\nProblem: {TOM}\n"
    (pair,) = plan_pairs([(TrainingPair(prompt, TOM_PLAN), TOM)], 1, random.Random(0))
    head, _, question = pair.prompt.rpartition("Problem: ")
    assert head == "Problem: Ravi reads 16 pages.\n1. 16 * 2 = 32\n\n" and question != f"{TOM}\n"
    assert plan_variant(TOM, TOM_PLAN, random.Random(0)) == (question.rstrip("\n"), pair.answer)
