"""Atomic steps, and reading them from GSM8K records.

A GSM8K answer holds one line per step and a last line "#### <final answer>"; calculator
annotations ``<<expr=result>>`` mark each computation. In the socratic variant a line
starts with a sub-question and " ** ". Each annotation is one atomic step.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sage_agent.errors import MalformedTask
from sage_agent.scoring.numeric import numbers_match, parse_number

ATOMIC_PROMPT = "Compute {expression}. Reply with the number only."
"""The atomic-step prompt: on GSM8K atoms this wording beats a terse "a-b=" by far."""

MAX_STEPS = 100
"""The most steps one task may have (a GSM8K solution has at most a dozen): each step
adds checkpoints, so a task of thousands would grow the database without bound."""

ANSWER_MAX_TOKENS = 32
"""Token cap of an atomic step's answer: "1234 * 5678 = 7006652" takes 20 SmolLM2 tokens,
and a cap of 12 cut such answers before their result."""

_OPERATORS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "/": "/", "÷": "/", "%": "%"}
_OPERATOR_ORDER = "+-*/%^"
_BINARY_OPERATOR = re.compile(r"(?<=[\d)])\s*(\*\*|[-+*/%×÷−])\s*(?=[-−(\d.$])")
_ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
_NUMBER_TOKEN = re.compile(r"\d+(?:\.\d+)?")


def operator_signature(expression: str) -> str:
    """The binary operators of an expression in a fixed order: "16-3-4" is "-", "4*6+2"
    is "+*", "2**3" is "^"; "" when there is none. Unary minus is not an operator."""
    found = {"^" if op == "**" else _OPERATORS[op] for op in _BINARY_OPERATOR.findall(expression)}
    return "".join(op for op in _OPERATOR_ORDER if op in found)


def operators_within(part: str, signature: str) -> bool:
    """Whether the operator signature ``part`` ("*") is made of some of the operators of
    ``signature`` ("*/") and is not all of them."""
    return bool(part) and set(part) < set(signature) <= set(_OPERATOR_ORDER)


def spaced_expression(expression: str) -> str:
    """The expression with one space around each binary operator: "60+17" is "60 + 17",
    "3*-2" is "3 * -2"."""
    return _BINARY_OPERATOR.sub(lambda m: f" {m.group(1)} ", expression)


@dataclass
class AtomicStep:
    """One step of a task. ``depends_on`` lists the indices of earlier steps whose answers
    this step's expression uses (substituted before answering)."""

    id: str
    task_id: str
    index: int
    question: str
    expression: str | None = None
    reference: str | None = None
    tag: str = "default"
    depends_on: list[int] = field(default_factory=list)
    family: str = "arithmetic"
    """The task family that judges the step's answer (``sage_agent.tasks.families``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_answer(answer: str) -> str:
    """The text after the "#### " line of a GSM8K answer."""
    for line in reversed(answer.strip().split("\n")):
        if line.startswith("####"):
            value = line[4:].strip()
            if value:
                return value
    raise MalformedTask('answer has no "#### <final answer>" line')


def _earlier_with(results: list[tuple[float, int]], values: list[float | None]) -> list[int]:
    """The indices of the earlier steps whose result is one of ``values`` (up to float
    noise), in order: a bisection per value, so a task's steps cost n log n, not n^2."""
    found = set()
    for value in values:
        if value is None:
            continue
        slack = 1e-6 * abs(value) + 1e-9  # as wide as numbers_match, a little wider
        start = bisect.bisect_left(results, (value - 2 * slack, -1))
        for result, index in results[start:]:
            if result > value + 2 * slack:
                break
            if numbers_match(value, result):
                found.add(index)
    return sorted(found)


def steps_from_gsm8k(
    record: dict[str, Any], task_id: str, *, socratic: bool = True
) -> list[AtomicStep]:
    """One AtomicStep per calculator annotation of a GSM8K record (socratic or plain).

    The question is the socratic sub-question when there is one (and ``socratic``), else
    the step's sentence with its annotations removed. A step depends on an earlier step
    when its expression holds that step's result.
    """
    if not isinstance(record.get("answer"), str) or not isinstance(record.get("question"), str):
        raise MalformedTask('a task needs string fields "question" and "answer"')
    final_answer(record["answer"])
    annotations = len(_ANNOTATION.findall(record["answer"]))
    if annotations > MAX_STEPS:
        raise MalformedTask(f"answer has {annotations} steps; a task has at most {MAX_STEPS}")
    steps: list[AtomicStep] = []
    results: list[tuple[float, int]] = []  # earlier steps' results, sorted, with their index
    for line in record["answer"].strip().split("\n"):
        if line.startswith("####"):
            continue
        sub_question, _, worked = line.rpartition(" ** ")
        for expression, result in _ANNOTATION.findall(line):
            expression = expression.strip()
            index = len(steps)
            sentence = _ANNOTATION.sub("", worked).strip()
            question = (sub_question.strip() if socratic else "") or sentence
            values = [parse_number(token) for token in _NUMBER_TOKEN.findall(expression)]
            depends_on = _earlier_with(results, values)
            value = parse_number(result.strip())
            if value is not None:
                bisect.insort(results, (value, index))
            steps.append(
                AtomicStep(
                    id=f"{task_id}:{index}",
                    task_id=task_id,
                    index=index,
                    question=question,
                    expression=expression,
                    reference=result.strip(),
                    tag=operator_signature(expression) or "default",
                    depends_on=depends_on,
                )
            )
    if not steps:
        raise MalformedTask("answer has no calculator annotations <<expr=result>>")
    return steps
