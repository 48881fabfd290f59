"""Plans as models write them, read into atomic steps.

A plan is a list of lines, numbered ("1.", "2)", "Step 3:") or bulleted ("-", "*", "•"),
each holding one computation in any of the shapes small and large models write:

    1. How many pens does Tom have? | 4*6        sub-question | expression
    2. 4 * 6 = 24                                expression = value
    - How many are left? 24 - 5 = 19 pens        text, expression = value, text
    3. [2] / 2   or   step 2 / 2                 an earlier result by step number

What the model wrote after "=" is its own result: it is dropped (each step is answered by
the solver and checked by the Trigger: that is the point), but remembered, because later
lines use earlier results by value ("24 - 5" after "4 * 6 = 24"). A number of a later
expression that equals an earlier step's written result is that step's result: the
verified value is put in its place and the step depends on it. Every expression is
checked with the verifier's parser; a line whose expression does not compute is dropped
with the lines that use it, and a plan without one computable line is a
DecompositionError quoting the model's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sage_agent.errors import DecompositionError, ExpressionError, MalformedTask
from sage_agent.scoring.numeric import format_number, numbers_match, parse_number
from sage_agent.scoring.verifier import evaluate_expression
from sage_agent.tasks.problems import generate_problems
from sage_agent.tasks.steps import (
    AtomicStep,
    final_answer,
    operator_signature,
    spaced_expression,
    steps_from_gsm8k,
)

_MARKER = re.compile(r"^\s*(?:(?:step\s*)?(\d+)\s*[.):]|[-*•])\s+", re.IGNORECASE)
_STEP_REFERENCE = re.compile(
    r"\[(\d+)\]|\b(?:the\s+)?(?:result|answer)\s+(?:of|from)\s+step\s*(\d+)|\bstep\s*(\d+)",
    re.IGNORECASE,
)
_TIMES = re.compile(r"(?<=[\d)\]])\s*[x×]\s*(?=[\d(\[])")
_UNIT_WORDS = re.compile(r"(\d)\s+(?:[A-Za-z][\w'-]*\s+){1,4}(?=(?:[-+*/×]|x\s)\s*[\d($])")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_SPAN = re.compile(r"[\d.()\[\]+\-*/%\s]+")
_NUMBER = re.compile(r"(?<![\w.\[])\d+(?:\.\d+)?(?![\w.\]])")
_OPERATOR_BETWEEN = re.compile(r"[\d)\]]\s*[-+*/%]\s*[-(\d\[]")


@dataclass(frozen=True)
class PlanLine:
    """One computation of a plan, as the model wrote it."""

    number: int | None
    """The step number it was written under, if any."""
    question: str
    expression: str
    """With "[k]" for the result of step k."""
    written: float | None
    """The result the model wrote after "=", if any."""
    source: str


def plan_lines(text: str) -> list[PlanLine]:
    """The lines of ``text`` that hold a computation, in order."""
    found = []
    for raw in text.splitlines():
        marker = _MARKER.match(raw)
        body = raw[marker.end() :] if marker else raw
        number = int(marker[1]) if marker and marker[1] else None
        question, _, rest = body.rpartition("|") if "|" in body else ("", "", body)
        # "2 large pizzas = 2 * 8 = 16 slices": the first "="-part that computes, and the
        # part after it is the model's result
        parts = _normalise(rest).split("=")
        position = next((i for i, part in enumerate(parts) if _expression(part)), None)
        if position is None:
            continue
        left, expression = parts[position], _expression(parts[position])
        assert expression is not None
        if not question:  # the text before the expression, e.g. "How many are left? 24-5"
            question = left[: left.find(expression.split()[0])].strip(" :,-")
            question = question or " = ".join(parts[:position]).strip(" :,-")
        after = parts[position + 1] if position + 1 < len(parts) else None
        # the number right after "=" ("= 24 pages today. 12 * 2" wrote 24, not 2)
        written = parse_number("=" + after) if after is not None else None
        found.append(PlanLine(number, question.strip(), expression, written, raw.strip()))
    return found


def _normalise(text: str) -> str:
    text = text.replace("−", "-").replace("÷", "/").replace("$", "")
    text = _UNIT_WORDS.sub(r"\1 ", _THOUSANDS.sub("", text))  # "60 mango trees * 2"
    text = _TIMES.sub("*", text)
    return _STEP_REFERENCE.sub(lambda m: f"[{m[1] or m[2] or m[3]}]", text)


def _expression(text: str) -> str | None:
    """The longest arithmetic span of ``text`` with an operator between two operands."""
    spans = [s.strip() for s in _SPAN.findall(text)]
    spans = [_balanced(s) for s in spans if _OPERATOR_BETWEEN.search(s)]
    spans = [s for s in spans if s and _OPERATOR_BETWEEN.search(s)]
    return max(spans, key=len) if spans else None


def _balanced(span: str) -> str:
    """The span without the unmatched parentheses at its ends (prose around it)."""
    while span and span.count("(") > span.count(")") and span[0] in "( ":
        span = span[1:].strip()
    while span and span.count(")") > span.count("(") and span[-1] in ") ":
        span = span[:-1].strip()
    return span.strip(" .")


def parse_plan(text: str, task_id: str) -> list[AtomicStep]:
    """The steps of a plan (see the module's docstring): expressions checked, earlier
    results substituted, the model's own results dropped."""
    steps: list[AtomicStep] = []
    numbered: dict[int, int] = {}  # step number as written -> its index
    written: list[tuple[float, int]] = []  # (a result the model wrote, its step's index)
    problems = []
    for position, line in enumerate(plan_lines(text), start=1):
        number = line.number if line.number is not None else position
        try:
            literal, depends_on = _resolve(line.expression, numbered, written, steps)
            value = evaluate_expression(literal)
        except (ExpressionError, KeyError) as error:
            problems.append(f"{line.source!r}: {error}")
            continue
        if steps and steps[-1].expression == literal:
            continue  # the same computation restated
        index = len(steps)
        numbered[number] = index
        if line.written is not None:
            written.append((line.written, index))
        written.append((value, index))
        steps.append(
            AtomicStep(
                id=f"{task_id}:{index}",
                task_id=task_id,
                index=index,
                question=line.question or f"What is {literal}?",
                expression=literal,
                reference=format_number(value),
                tag=operator_signature(literal) or "default",
                depends_on=depends_on,
            )
        )
    if not steps:
        detail = f" ({problems[0]})" if problems else ""
        raise DecompositionError(f"no computable step in the plan{detail}: {text.strip()[:200]!r}")
    return steps


def _resolve(
    expression: str,
    numbered: dict[int, int],
    written: list[tuple[float, int]],
    steps: list[AtomicStep],
) -> tuple[str, list[int]]:
    """The expression with step references and earlier results replaced by verified
    values, and the indices of the steps it uses. KeyError: an unknown step."""
    depends: set[int] = set()

    def by_step(match: re.Match[str]) -> str:
        number = int(match[1])
        if number not in numbered:
            raise KeyError(f"[{number}] is not an earlier step")
        depends.add(numbered[number])
        return steps[numbered[number]].reference or ""

    def by_value(match: re.Match[str]) -> str:
        value = parse_number(match[0])
        for result, index in reversed(written):
            if numbers_match(value, result):
                depends.add(index)
                return steps[index].reference or match[0]
        return match[0]

    literal = re.sub(r"\[(\d+)\]", by_step, _NUMBER.sub(by_value, expression))
    return literal, sorted(depends)


def format_plan(steps: list[AtomicStep]) -> str:
    """Steps as the plan a model should write: "k. sub-question expression = value" per
    step, earlier results written by value (what a planner adapter is trained on). A step
    whose question is not a question (GSM8K's plain solutions: the solution's sentence,
    which carries its own arithmetic, "Maila read 12 x 2 = 24 pages today.") is written
    "k. expression = value"."""
    lines = []
    for i, step in enumerate(steps, start=1):
        computation = f"{spaced_expression(step.expression or '')} = {step.reference}"
        asks = step.question.strip().endswith("?")
        lines.append(
            f"{i}. {step.question.strip()} {computation}" if asks else f"{i}. {computation}"
        )
    return "\n".join(lines)


PLAN_INSTRUCTION = "Solve the problem in short numbered steps, one calculation per step."


def plan_prompt(question: str, examples: int = 2, seed: int = 7) -> str:
    """The few-shot plan prompt: ``examples`` of the project's generated problems with
    their plans, then the question."""
    shots = []
    for record in generate_problems(examples, seed=seed):
        plan = format_plan(steps_from_gsm8k(record, "example"))
        shots.append(f"Problem: {record['question']}\n{plan}")
    return "\n\n".join([PLAN_INSTRUCTION, *shots, f"Problem: {question}\n"])


PLAN_TAG = "plan"
"""The buffer tag of plan failures, and of the planner adapters trained on them."""

PLAN_MAX_TOKENS = 160
"""Token cap of a plan (GSM8K's longest plans run to about 8 lines of 15 tokens)."""

PLAN_STOP = ("\n\n",)
"""Where a plan ends: its first blank line, as the plans of the prompt's examples end.
Without it the embedded model goes on to a next "Problem:" of its own, to the token cap,
and its steps would be read as the plan's."""


def gold_plan(task: dict) -> str | None:
    """The plan GSM8K's worked solution makes (its socratic sub-questions and calculator
    annotations), or None for a task without one, or whose plan does not compute the
    task's final answer (a tenth of GSM8K's training split leaves a step unannotated):
    a planner must not learn it, nor be judged against it."""
    try:
        plan = format_plan(steps_from_gsm8k(task, str(task.get("id", "task"))))
        answer = final_answer(task["answer"])
    except MalformedTask:
        return None
    return plan if numbers_match(plan_result(plan), parse_number(answer)) else None


def plan_result(text: str) -> float | None:
    """What a plan computes: its last step's verified value (None: it does not parse)."""
    try:
        return parse_number(parse_plan(text, "plan")[-1].reference)
    except DecompositionError:
        return None


def plan_matches(prediction: str, reference: str) -> bool:
    """Whether a plan the model wrote computes what the reference plan computes: both
    parse, and their last steps' verified values are equal (the exact match of plans)."""
    expected = plan_result(reference)
    return expected is not None and numbers_match(plan_result(prediction), expected)
