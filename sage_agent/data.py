"""Reading task files: GSM8K-style JSONL, one {"question", "answer"} object per line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sage_agent.errors import DataError
from sage_agent.records import Task

log = logging.getLogger(__name__)


def read_tasks(path: str | Path, *, limit: int | None = None, strict: bool = False) -> list[Task]:
    """Tasks of a JSONL file, each with an "id" of ``<file stem>:<line number>``.

    A line that is not a JSON object with a string "question" is skipped with a warning
    naming it, or, with ``strict``, raises DataError. Blank lines are ignored. Whether the
    answer splits into steps is the decomposer's business, not this reader's.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    tasks: list[Task] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(tasks) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("question"), str):
                    raise ValueError('not a JSON object with a string "question"')
            except ValueError as error:
                message = f"{path}:{number}: {error}"
                if strict:
                    raise DataError(message) from error
                log.warning("skipping %s", message)
                continue
            tasks.append({**record, "id": str(record.get("id") or f"{path.stem}:{number}")})
    return tasks
