"""A step's prompt: its expression in the atomic-step template, with earlier answers
substituted when the run uses the model's own answers, and its reference."""

from __future__ import annotations

from typing import Literal

from sage_agent.errors import ExpressionError
from sage_agent.records import StepRecord
from sage_agent.scoring.numeric import format_number
from sage_agent.scoring.verifier import arithmetic_verifier, evaluate_expression
from sage_agent.tasks.decompose import substitute
from sage_agent.tasks.steps import AtomicStep


def step_prompt(
    step: AtomicStep,
    steps: list[AtomicStep],
    records: list[StepRecord],
    mode: Literal["answers", "references"],
    template: str,
) -> tuple[str, str | None, str | None, str | None]:
    """The step's prompt, the expression it asks for, its reference and a note. In
    "answers" mode earlier answers replace the results they stand for, and the reference
    is recomputed from the substituted expression."""
    expression, reference, note = step.expression, step.reference, None
    if mode == "answers" and step.expression and step.depends_on:
        answers = {r["index"]: r["answer"] for r in records}
        substituted = substitute(step, steps, answers)
        if substituted is None:
            note = "an earlier answer has no number; the step uses the reference values"
        elif substituted != step.expression:
            try:
                reference = format_number(evaluate_expression(substituted))
                expression = substituted
            except ExpressionError as error:
                note = f"substituted expression does not evaluate ({error}); references used"
    if reference is None and expression is not None:
        try:
            reference = arithmetic_verifier(expression)
        except ExpressionError as error:
            note = f"expression does not parse: {error}"
            expression = None
    if expression is not None:
        return template.format(expression=expression), expression, reference, note
    return step.question, None, reference, note
