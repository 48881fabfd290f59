"""Reading task files: JSONL, one task per line, of any task family (GSM8K's
{"question", "answer"}, PubMedQA's records, BIG-Bench Hard's and a user's own
{"input", "target"}; ``sage_agent.tasks.families``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sage_agent.errors import DataError, MalformedTask
from sage_agent.records import Task
from sage_agent.tasks.families import TaskFamily, detect_family

log = logging.getLogger(__name__)


MAX_LINE_CHARS = 50_000
"""The longest task line read: every step's checkpoint carries the task, so one huge
line would be copied into hundreds of checkpoints (a PubMedQA item is about 5,000)."""


def read_tasks(
    path: str | Path,
    *,
    limit: int | None = None,
    strict: bool = False,
    family: TaskFamily | None = None,
) -> list[Task]:
    """Tasks of a JSONL file, each with an "id" (its own, else ``<file stem>:<line
    number>``) and a "family": ``family``, else the one the first readable line's fields
    say (``families.detect_family``), for the whole file.

    A line that is not UTF-8, longer than ``MAX_LINE_CHARS``, not a JSON object, not an
    item of the family (for arithmetic: a string "question"), or whose id was used by an
    earlier line is skipped with a warning naming it, or, with ``strict``, raises
    DataError. Blank lines are ignored. Whether an arithmetic answer splits into steps is
    the decomposer's business, not this reader's.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if limit is not None and len(tasks) >= limit:
                break
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_CHARS:
                    raise ValueError(f"{len(line)} characters; a task is at most {MAX_LINE_CHARS}")
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                family = family or detect_family(record, path.stem)
                _check_item(record, family)
                task_id = str(record.get("id") or f"{path.stem}:{number}")
                if task_id in seen:
                    raise ValueError(f"id {task_id!r} was already used on line {seen[task_id]}")
            except ValueError as error:  # UnicodeDecodeError and JSONDecodeError included
                message = f"{path}:{number}: {_short(error)}"
                if strict:
                    raise DataError(message) from error
                log.warning("skipping %s", message)
                continue
            seen[task_id] = number
            tasks.append({**record, "id": task_id, "family": family.name})
    return tasks


def _check_item(record: dict, family: TaskFamily) -> None:
    """ValueError naming what the record lacks to be an item of ``family``."""
    if family.multi_step:
        if not isinstance(record.get("question"), str):
            raise ValueError('not a JSON object with a string "question"')
        return
    try:
        family.item(record)
    except MalformedTask as error:
        raise ValueError(str(error)) from error


def _short(error: ValueError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 (byte {error.object[error.start]:#04x} at column {error.start + 1})"
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."
