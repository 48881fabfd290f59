"""A run on a terminal: a tqdm bar over its tasks, the store's training events, and its
figures at the end."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from tqdm import tqdm

from sage_agent.agent import Event, RunSummary, SageAgent
from sage_agent.records import Task


def run_with_progress(
    agent: SageAgent, tasks: list[Task], *, quiet: bool, **run_options: Any
) -> RunSummary:
    """``agent.run`` with a tqdm bar of tasks (running step EM) and, unless ``quiet``, the
    store's training events on stderr."""
    bar = tqdm(total=len(tasks), desc="tasks", unit="task", file=sys.stderr)
    steps = {"n": 0, "passed": 0}

    def on_event(event: Event) -> None:
        kind = event.get("event")
        if kind == "step_done":
            steps["n"] += 1
            steps["passed"] += event["passed"]
            bar.set_postfix(step_em=f"{steps['passed'] / steps['n']:.0%}")
        elif kind in ("training", "adapter_kept", "retry", "trial_done") and not quiet:
            tqdm.write(f"  {describe(event)}", file=sys.stderr)

    try:
        return agent.run(tasks, on_event=on_event, on_task=lambda _r: bar.update(1), **run_options)
    finally:
        bar.close()


def describe(event: Event) -> str:
    """One line for a training or retry event."""
    kind = event["event"]
    if kind == "training":
        return f"cluster {event['cluster_id']} is ready: training LoRA adapters"
    if kind == "trial_done":
        return (
            f"trial {event['trial']}, rung {event.get('rung', 0)}: val EM "
            f"{event['val_em']:.2f} (teacher-forced), loss {event['val_loss']:.3f}, "
            f"{event['seconds']:.0f} s"
        )
    if kind == "adapter_kept":
        return f"adapter {event['adapter']} kept (val EM {event['val_em']:.2f})"
    if event["adapter"] is None:
        return "retry with the base model"
    return f"retry with adapter {event['adapter']}"


def print_summary(summary: RunSummary, as_json: bool) -> None:
    """The run's figures as a table on stdout, or one JSON object."""
    data = asdict(summary)
    if as_json:
        print(json.dumps(data))
        return
    from tabulate import tabulate

    shown = {k: v for k, v in data.items() if k not in ("threads", "errors", "answers")}
    print(tabulate(shown.items(), headers=("metric", "value"), floatfmt=".3f"))
    for task, answer in list(summary.answers.items())[:20]:  # plain questions: no reference
        print(f"answer to {task}: {answer}")
    if len(summary.answers) > 20:
        print(f"... and {len(summary.answers) - 20} more answers (--json has them all)")
    for error in data["errors"]:
        print(f"error: {error}")
    if data["threads"]:
        print(f"threads: {len(data['threads'])}, latest {data['threads'][-1]}")
