"""Decomposers: a task -> its atomic steps, and substituting earlier answers into later steps.

A task is a dict with "id", "question" and, for data tasks, the GSM8K "answer". Three kinds:

* from the data: ``socratic_decomposer`` (GSM8K socratic lines, the sub-question is the
  step's question) and ``annotation_decomposer`` (calculator annotations, the sentence
  around each is the question);
* from a model: ``LLMDecomposer`` prompts any LangChain chat model for a numbered plan;
* any callable ``task -> list[AtomicStep]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from langchain_core.language_models import BaseChatModel

from sage_agent.errors import DecompositionError, ExpressionError, MalformedTask
from sage_agent.numeric import format_number, numbers_match, parse_number
from sage_agent.records import Task
from sage_agent.steps import AtomicStep, operator_signature, steps_from_gsm8k
from sage_agent.verifier import evaluate_expression

Decomposer = Callable[[Task], list[AtomicStep]]

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def socratic_decomposer(task: Task) -> list[AtomicStep]:
    """One step per calculator annotation; the socratic sub-question is the question."""
    return _from_data(task, socratic=True)


def annotation_decomposer(task: Task) -> list[AtomicStep]:
    """One step per calculator annotation; the sentence around it is the question."""
    return _from_data(task, socratic=False)


def _from_data(task: Task, *, socratic: bool) -> list[AtomicStep]:
    try:
        return steps_from_gsm8k(task, str(task.get("id", "task")), socratic=socratic)
    except MalformedTask as error:
        raise DecompositionError(str(error)) from error


_PLAN_PROMPT = """Split the math problem into short steps, one per line, numbered.
Each line: <number>. <sub-question> | <arithmetic expression>
Use [k] in an expression for the result of step k. Write nothing else.

Example problem: Tom has 4 boxes of 6 pens and gives away 5 pens. How many pens are left?
1. How many pens does Tom have? | 4*6
2. How many pens are left? | [1]-5

Problem: {question}"""

_PLAN_LINE = re.compile(r"^\s*(\d+)[.)]\s*(.*?)\s*\|\s*(.+?)\s*$")
_PLACEHOLDER = re.compile(r"\[(\d+)\]")


class LLMDecomposer:
    """Plans with any LangChain chat model (a bigger one than the local solver may plan).

    The model writes "k. sub-question | expression" lines, using [k] for earlier results.
    Each expression is checked with the arithmetic verifier; the step's reference is its
    value with earlier values filled in. Output that does not parse raises
    DecompositionError quoting the model's text, so the trace shows what went wrong.
    """

    def __init__(self, model: BaseChatModel, prompt: str = _PLAN_PROMPT) -> None:
        self.model = model
        self.prompt = prompt

    def __call__(self, task: Task) -> list[AtomicStep]:
        question = task.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DecompositionError('a task needs a non-empty "question"')
        text = self.model.invoke(self.prompt.format(question=question)).text
        return parse_plan(text, str(task.get("id", "task")))


def parse_plan(text: str, task_id: str) -> list[AtomicStep]:
    """Steps from "k. sub-question | expression" lines (other lines are ignored)."""
    steps: list[AtomicStep] = []
    values: dict[int, float] = {}
    for line in text.splitlines():
        match = _PLAN_LINE.match(line)
        if not match:
            continue
        number, question, expression = int(match[1]), match[2], match[3]
        used = [int(k) for k in _PLACEHOLDER.findall(expression)]
        missing = [k for k in used if k not in values]
        if missing:
            raise DecompositionError(
                f"step {number} uses [{missing[0]}], which is not an earlier step: {line!r}"
            )
        literal = _PLACEHOLDER.sub(lambda m: format_number(values[int(m[1])]), expression)
        try:
            value = evaluate_expression(literal)
        except ExpressionError as error:
            raise DecompositionError(f"step {number}: {error}: {line!r}") from error
        values[number] = value
        index = len(steps)
        steps.append(
            AtomicStep(
                id=f"{task_id}:{index}",
                task_id=task_id,
                index=index,
                question=question or literal,
                expression=literal,
                reference=format_number(value),
                tag=operator_signature(literal) or "default",
                depends_on=sorted({_index_of(k, values) for k in used}),
            )
        )
    if not steps:
        raise DecompositionError(
            f"no 'k. sub-question | expression' line in the plan: {text.strip()[:200]!r}"
        )
    return steps


def _index_of(number: int, values: dict[int, float]) -> int:
    return sorted(values).index(number)


def substitute(step: AtomicStep, steps: list[AtomicStep], answers: dict[int, str]) -> str | None:
    """The step's expression with the results of the steps it depends on replaced by their
    ``answers`` (by step index). A number in the expression that equals an earlier step's
    reference is that step's result (how GSM8K writes it). Returns None when an earlier
    answer has no number to put in."""
    if step.expression is None:
        return None
    replacements: list[tuple[float, str]] = []
    for index in step.depends_on:
        reference = parse_number(steps[index].reference or "")
        if reference is None or index not in answers:
            continue
        value = parse_number(answers[index])
        if value is None:
            return None
        replacements.append((reference, format_number(value)))

    def replace(match: re.Match[str]) -> str:
        number = parse_number(match[0])
        for reference, value in replacements:
            if numbers_match(number, reference):
                return value
        return match[0]

    return _NUMBER.sub(replace, step.expression)
