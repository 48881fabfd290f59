"""More training pairs for a small cluster: variants of its own steps, labelled by the
verifier.

A variant keeps a step's expression shape and puts random numbers of the same length
in it ("238+17" may become "604+52"); the verifier computes the new reference. A cluster
of a few dozen failures thus trains on several times as many atoms of exactly its kind.

A plan's variant changes the question's numbers and computes its plan again, step by
step, with the new numbers and the new results ("Tom has 4 boxes of 6 pens" may become
"Tom has 7 boxes of 3 pens": "1. 7 * 3 = 21" ...). It is made only where every number of
the plan is the question's, an earlier step's result or a common constant, so the new
plan is the new question's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from sage_agent.errors import DecompositionError
from sage_agent.records import TrainingPair
from sage_agent.scoring.numeric import format_number, numbers_match, parse_number
from sage_agent.scoring.verifier import (
    ExpressionError,
    Verifier,
    arithmetic_verifier,
    evaluate_expression,
)
from sage_agent.tasks.plans import parse_plan, plan_result
from sage_agent.tasks.steps import spaced_expression
from sage_agent.training.formats import AnswerFormat, number_answer

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_QUESTION_NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|\.\d)")
_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
_CONSTANTS = frozenset({1, 2, 3, 4, 7, 10, 12, 24, 30, 52, 60, 100, 365, 1000})
"""Numbers a solution uses without the question writing them (twice, a dozen, a week, a
percent, an hour): a question's number among them is kept as it is, so that a plan's
constant does not change with it."""


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


def plan_variant(question: str, plan: str, rng: random.Random) -> tuple[str, str] | None:
    """The question with its numbers changed (same digit counts) and its plan computed
    again with them, "k. expression = value" a step; None when the plan uses a number it
    does not explain, or a step's result would change kind (a whole number becoming a
    fraction, a sign flipping), or no number could change."""
    try:
        steps = parse_plan(plan, "variant")
    except DecompositionError:
        return None
    found = (parse_number(m[0]) for m in _QUESTION_NUMBER.finditer(question))
    numbers = {v for v in found if v is not None}
    fractions = {parse_number(n) for pair in _FRACTION.findall(question) for n in pair}
    kept = _CONSTANTS | fractions  # "3/4 of its capacity" stays 3/4
    changed = {v: _same_shape(v, rng) for v in numbers if v not in kept}
    changed = {old: new for old, new in changed.items() if new != old}
    if not changed:
        return None
    # A constant two of the question's numbers also make (400 x 0.25 = 100) may be the
    # result of a step the solution did not annotate: it would not change with them.
    made = {_pair_result(a, op, b) for a in numbers for b in numbers for op in "+-*/"}
    unchanged = {v for v in numbers if v not in changed} | (_CONSTANTS - made)
    results: list[tuple[float, float]] = []  # (an earlier result, its value in the variant)
    lines = []
    for position, step in enumerate(steps, start=1):
        expression = _NUMBER.sub(
            lambda m: _operand(m[0], results, changed, unchanged), step.expression
        )
        if "?" in expression:
            return None
        try:
            value = evaluate_expression(expression)
        except ExpressionError:
            return None
        old = parse_number(step.reference)
        if (
            old is None
            or (old >= 0) != (value >= 0)
            or (old.is_integer() and not value.is_integer())
        ):
            return None
        results.append((old, value))
        lines.append(f"{position}. {spaced_expression(expression)} = {format_number(value)}")
    new_plan = "\n".join(lines)
    if not numbers_match(plan_result(new_plan), results[-1][1]):  # reads back as written
        return None

    def new_number(match: re.Match[str]) -> str:
        value = parse_number(match[0])
        return format_number(changed[value]) if value in changed else match[0]

    return _QUESTION_NUMBER.sub(new_number, question), new_plan


def _operand(
    text: str,
    results: list[tuple[float, float]],
    changed: dict[float, float],
    unchanged: set[float],
) -> str:
    """A plan operand in the variant: an earlier result's new value, a changed question
    number, or itself (a question's number kept, a constant); "?" when it is none."""
    value = float(text)
    for old, new in reversed(results):
        if numbers_match(value, old):
            return format_number(new)
    if value in changed:
        return format_number(changed[value])
    return text if value in unchanged else "?"


def _pair_result(a: float, operator: str, b: float) -> float | None:
    if operator == "/":
        return round(a / b, 6) if b else None
    return round({"+": a + b, "-": a - b, "*": a * b}[operator], 6)


def _same_shape(value: float, rng: random.Random) -> float:
    """A random number with as many digits before and after the point as ``value``."""
    whole, _, fraction = format_number(value).partition(".")
    low = 10 ** (len(whole) - 1) if len(whole) > 1 else 1
    new = str(rng.randint(low, 10 ** len(whole) - 1))
    if fraction:
        new += "." + str(rng.randint(1, 10 ** len(fraction) - 1)).zfill(len(fraction))
    return float(new)


def plan_pairs(
    examples: Sequence[tuple[TrainingPair, str]], per_example: int, rng: random.Random
) -> list[TrainingPair]:
    """``per_example`` variants of each (planner prompt and plan, question): the question
    changed in the prompt (its last occurrence: the few-shot examples before it stay)."""
    pairs = []
    for pair, question in examples:
        head, found, tail = pair.prompt.rpartition(question)
        if not found:
            continue
        for _ in range(per_example):
            variant = plan_variant(question, pair.answer, rng)
            if variant is not None:
                pairs.append(TrainingPair(head + variant[0] + tail, variant[1]))
    return pairs
