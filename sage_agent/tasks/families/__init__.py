"""Task families: how each kind of task is asked, judged, tagged and varied.

``arithmetic`` (GSM8K: many steps, judged by their numbers), ``pubmedqa`` (yes / no /
maybe over an abstract), ``bbh:<task>`` (nine BIG-Bench Hard tasks) and ``text`` (a
user's own ``{"input", "target"}``, judged by normalised string match). A task names
its family in a "family" field; a file's is detected from its fields
(:func:`detect_family`) or given (``sage-agent run --format``).
"""

from __future__ import annotations

from typing import Any

from sage_agent.errors import DataError
from sage_agent.tasks.families.arithmetic import ARITHMETIC
from sage_agent.tasks.families.base import TaskFamily, normalised
from sage_agent.tasks.families.bbh import BBH_FAMILIES, input_target
from sage_agent.tasks.families.pubmedqa import PUBMEDQA

TEXT = TaskFamily("text", "text", "Reply with the answer only.", input_target, max_tokens=64)
"""A user's own ``{"input", "target"}`` lines: the answer's first line, normalised (case,
spaces, a closing full stop), must be the target's."""

FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (ARITHMETIC, PUBMEDQA, TEXT, *BBH_FAMILIES.values())
}


def family_named(name: str) -> TaskFamily:
    """The family called ``name`` ("pubmedqa", "bbh:navigate" or BBH's bare "navigate",
    "gsm8k" for arithmetic); DataError listing the names otherwise."""
    name = {"gsm8k": "arithmetic"}.get(name, name)
    family = FAMILIES.get(name) or BBH_FAMILIES.get(name)
    if family is None:
        raise DataError(f"unknown task family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return family


def family_of_task(task: dict[str, Any]) -> TaskFamily:
    """The family a task names ("family"), else the one its fields say."""
    name = task.get("family")
    return family_named(name) if isinstance(name, str) else detect_family(task)


def family_of_tag(tag: str) -> TaskFamily:
    """The family whose failures carry ``tag`` (an operator signature is arithmetic's)."""
    return FAMILIES.get(tag, ARITHMETIC)


def question_of(task: dict[str, Any]) -> str | None:
    """What a task asks, for the reports: GSM8K's and PubMedQA's "question", a BIG-Bench
    Hard or ``text`` item's "input"."""
    return task.get("question") or task.get("input")


def detect_family(record: dict[str, Any], source: str = "") -> TaskFamily:
    """The family of a record by its fields: PubMedQA's "final_decision" and "contexts";
    BBH's "input" and "target", the task named by the record's id ("navigate-3") or the
    file's name (``source``), else ``text``; GSM8K's "question" and "answer" otherwise."""
    if "final_decision" in record and "contexts" in record:
        return PUBMEDQA
    if "input" in record and "target" in record:
        for name in (str(record.get("id", "")).rpartition("-")[0], source):
            if name in BBH_FAMILIES:
                return BBH_FAMILIES[name]
        return TEXT
    return ARITHMETIC


__all__ = [
    "ARITHMETIC",
    "FAMILIES",
    "PUBMEDQA",
    "TEXT",
    "TaskFamily",
    "detect_family",
    "family_named",
    "family_of_tag",
    "family_of_task",
    "normalised",
    "question_of",
]
