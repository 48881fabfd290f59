"""Decomposers: a task -> its atomic steps, and substituting earlier answers into later steps.

A task is a dict with "id", "question" and, for data tasks, the GSM8K "answer". Three kinds:

* from the data: ``socratic_decomposer`` (GSM8K socratic lines, the sub-question is the
  step's question) and ``annotation_decomposer`` (calculator annotations, the sentence
  around each is the question);
* from a model: ``LLMDecomposer`` prompts any LangChain chat model for a plan, read by
  ``sage_agent.tasks.plans``;
* any callable ``task -> list[AtomicStep]``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel

from sage_agent.chat import ChatSage
from sage_agent.errors import DecompositionError, MalformedTask
from sage_agent.records import Task
from sage_agent.scoring.numeric import format_number, numbers_match, parse_number
from sage_agent.tasks.plans import PLAN_MAX_TOKENS, PLAN_STOP, parse_plan, plan_prompt
from sage_agent.tasks.steps import AtomicStep, steps_from_gsm8k

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


class LLMDecomposer:
    """Plans with any LangChain chat model: the embedded one (its few-shot prompt is
    ``sage_agent.tasks.plans.plan_prompt``) or a bigger one.

    The model's plan is read by ``sage_agent.tasks.plans.parse_plan``: numbered or bulleted
    lines, "sub-question | expression" or "expression = value", earlier results by step
    number or by value; every expression is checked with the verifier, the model's own
    results are dropped. A plan without one computable line raises DecompositionError
    quoting the model's text, so the trace shows what went wrong. Generation stops at the
    first blank line (``plans.PLAN_STOP``).

    A plan that does not parse is asked for again with each of ``retry_prompts`` in turn
    (by default, for the default prompt, the same instruction with other example
    problems: greedy decoding writes the same plan to the same prompt, and a small model's
    plan depends on its examples); the first prompt's error is raised when none parses.
    ``prompt`` stays the planner's prompt: planner adapters are trained and routed on it.
    """

    def __init__(
        self,
        model: BaseChatModel,
        prompt: Callable[[str], str] = plan_prompt,
        retry_prompts: Sequence[Callable[[str], str]] | None = None,
    ) -> None:
        self.model = model
        self.prompt = prompt
        if retry_prompts is None:
            retry_prompts = RETRY_PLAN_PROMPTS if prompt is plan_prompt else ()
        self.retry_prompts = tuple(retry_prompts)

    def __call__(self, task: Task, *, adapter: str | None = None) -> list[AtomicStep]:
        """The task's plan as steps; with ChatSage, ``adapter`` names the loaded planner
        adapter to plan with (per call: threads sharing the model are not disturbed)."""
        question = task.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DecompositionError('a task needs a non-empty "question"')
        # A ChatSage's default cap (256) is for chat; a plan needs PLAN_MAX_TOKENS at most,
        # and a plan that loops ends where it starts repeating itself.
        limit: dict[str, Any] = {}
        if isinstance(self.model, ChatSage):
            limit = {"max_tokens": PLAN_MAX_TOKENS, "stop_repeated_line": True}
            if adapter is not None:
                limit["adapter"] = adapter
        first_error: DecompositionError | None = None
        for prompt in (self.prompt, *self.retry_prompts):
            text = self.model.invoke(prompt(question), stop=list(PLAN_STOP), **limit).text
            try:
                return parse_plan(text, str(task.get("id", "task")))
            except DecompositionError as error:
                first_error = first_error or error
        assert first_error is not None
        if self.retry_prompts:
            tried = len(self.retry_prompts) + 1
            raise DecompositionError(f"{first_error} (none of {tried} prompts gave a plan)")
        raise first_error


RETRY_PLAN_PROMPTS: tuple[Callable[[str], str], ...] = (functools.partial(plan_prompt, seed=8),)
"""The default planner's second prompt: other generated example problems."""


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
