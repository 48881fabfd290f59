"""What the benchmarks share: GSM8K atomic steps in a seeded order."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from sage_agent import AtomicStep, MalformedTask, steps_from_gsm8k


def gsm8k_steps(path: Path, seed: int) -> Iterator[AtomicStep]:
    """Every annotated step of the GSM8K file, problems shuffled with ``seed``; problems
    without annotations are passed over."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(records)
    for i, record in enumerate(records):
        try:
            yield from steps_from_gsm8k(record, task_id=str(i))
        except MalformedTask:
            continue
