"""What the benchmarks share: GSM8K atomic steps in a seeded order, clusters built from
them the way the buffer hands them to the LoRA Store, and the head of a results file."""

from __future__ import annotations

import json
import os
import random
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sage_agent import AtomicStep, MalformedTask, steps_from_gsm8k
from sage_agent.buffer import Cluster, Sample
from sage_agent.tasks.plans import gold_plan

PLANS_HELD_OUT = slice(7200, 7240)
"""The GSM8K lines bench_plan_stops and bench_planner_training write plans for (the
planner training benchmark trains on lines before them)."""


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


def cluster_of(
    cluster_id: int, tag: str, members: Sequence[tuple[str, str, str]], vectors: np.ndarray
) -> Cluster:
    """A buffer Cluster of (prompt, expression, reference) members whose prompt embeddings
    are ``vectors``; the centroid is their normalised mean."""
    centroid = vectors.mean(axis=0)
    return Cluster(
        id=cluster_id,
        tag=tag,
        size=len(members),
        centroid=centroid / np.linalg.norm(centroid),
        keywords=frozenset(),
        version=1,
        trained_version=None,
        trained_size=None,
        samples=[
            Sample(i, prompt, tag, {"expression": expression, "reference": reference})
            for i, (prompt, expression, reference) in enumerate(members)
        ],
    )


def gold_plans(lines: Sequence[str]) -> list[tuple[dict, str | None]]:
    """Each GSM8K line's task and its gold plan (``plans.gold_plan``; None where the
    annotations do not compute the answer)."""
    tasks = [json.loads(line) for line in lines]
    return [(task, gold_plan({**task, "id": "plan"})) for task in tasks]


def results_header(title: str, setting: str) -> list[str]:
    """The first lines of a results file: its title, the command that wrote it (this
    process's) and the machine, followed by ``setting``."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu_features()}). {setting}",
        "",
    ]


def cpu_features() -> str:
    """The CPU's model and the matmul features timings depend on (bf16 kernels, AMX):
    timings are comparable only between runs on the same kind of CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU model unknown"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "CPU model unknown",
    )
    flags = set(
        next(
            (
                line.split(":", 1)[1].split()
                for line in info.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    )
    wanted = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{model}; {' '.join(wanted) or 'no avx2'}"


def write_results(out: Path, lines: Sequence[str]) -> None:
    """Write a results file (its folder made if need be) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")
