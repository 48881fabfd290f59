"""Arithmetic word problems (GSM8K's shape): the family whose items split into atomic
steps, each an expression judged by its number (the verifier's reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sage_agent.errors import MalformedTask
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.tasks.families.base import TaskFamily
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, AtomicStep, final_answer, steps_from_gsm8k


def question_answer(record: dict[str, Any]) -> tuple[str, str]:
    return record["question"], final_answer(record["answer"])


@dataclass(frozen=True)
class ArithmeticFamily(TaskFamily):
    """Steps come from the worked answer's calculator annotations; a step's tag is its
    operator signature, so clusters form per operator."""

    @property
    def multi_step(self) -> bool:
        return True

    def steps(self, task: dict[str, Any]) -> list[AtomicStep]:
        return steps_from_gsm8k(task, str(task.get("id", "task")))

    def target(self, task: dict[str, Any]) -> str | None:
        try:
            return final_answer(task["answer"]) if isinstance(task.get("answer"), str) else None
        except MalformedTask:
            return None

    def judge(self, answer: str, reference: str) -> bool:
        return numbers_match(parse_number(answer), parse_number(reference))


ARITHMETIC = ArithmeticFamily(
    "arithmetic",
    "number",
    "Reply with the number only.",
    question_answer,
    max_tokens=ANSWER_MAX_TOKENS,
)
