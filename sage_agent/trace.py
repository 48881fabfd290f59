"""Reading a thread back from its checkpoints: rows per attempt, the node path, and
renderings as a table, JSON, Mermaid or a self-contained HTML report with plots."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from tabulate import tabulate

from sage_agent.agent import SageAgent
from sage_agent.errors import NotFoundError
from sage_agent.records import Attempt

_METRICS = ("lm", "bleu", "rouge_l", "cosine")


def latest_thread(agent: SageAgent) -> str:
    """The most recent thread that has a checkpoint (a run registers a thread just
    before its first checkpoint is written)."""
    for thread in reversed(agent.threads()):
        if agent.state(thread["id"]):
            return thread["id"]
    raise NotFoundError(f"{agent.db_path} holds no threads yet; run a task first")


def trace(agent: SageAgent, thread_id: str) -> dict[str, Any]:
    """A thread as plain data: task, result, node path and one row per attempt."""
    config = {"configurable": {"thread_id": thread_id}}
    snapshot = agent.graph.get_state(config)
    if not snapshot.values:
        raise NotFoundError(f"no thread {thread_id!r} in {agent.db_path}")
    history = list(agent.graph.get_state_history(config))
    nodes = [node for past in reversed(history) for node in past.next if node != "__start__"]
    values = snapshot.values
    rows = []
    for record in values.get("records") or []:
        for attempt in record["attempts"]:
            metrics = attempt.get("metrics") or {}
            buffered = attempt.get("buffer") or {}
            training = attempt.get("training") or {}
            rows.append(
                {
                    "step": record["index"] + 1,
                    "node": attempt["kind"],
                    "question": record["question"],
                    "prompt": attempt["prompt"],
                    "answer": attempt["answer"],
                    "reference": attempt["reference"],
                    **{name: metrics.get(name) for name in _METRICS},
                    "anomaly_score": attempt.get("anomaly_score"),
                    "failed": attempt.get("failed"),
                    "cluster": buffered.get("cluster_id"),
                    "buffer": buffered.get("status"),
                    "adapter": attempt.get("adapter"),
                    "trained": training.get("adapters"),
                    "outcome": _outcome(attempt),
                    "note": attempt.get("note"),
                }
            )
    return {
        "thread": thread_id,
        "task": values.get("task", {}).get("id"),
        "question": values.get("task", {}).get("question"),
        "result": values.get("result"),
        "error": values.get("error"),
        "pending": list(snapshot.next),
        "nodes": nodes,
        "rows": rows,
    }


def _outcome(attempt: Attempt) -> str:
    if attempt.get("failed") is None:
        return "-"
    if not attempt["failed"]:
        return "pass" if attempt["kind"] == "answer" else "retry fixed it"
    return "fail" if attempt["kind"] == "answer" else "retry failed"


def render_table(data: dict[str, Any]) -> str:
    columns = ("step", "node", "prompt", "answer", "reference", *_METRICS)
    columns += ("anomaly_score", "cluster", "adapter", "outcome")
    table = [[_short(row[c]) for c in columns] for row in data["rows"]]
    result = data["result"] or {}
    head = (
        f"thread {data['thread']}  task {data['task']}\n{data['question']}\n"
        f"nodes: {' -> '.join(data['nodes'])}\n"
    )
    tail = (
        f"\nfinal answer {result.get('answer')!r}, reference {result.get('reference')!r}, "
        f"correct: {result.get('correct')}"
    )
    if data["error"]:
        tail += f"\nerror: {data['error']}"
    if data["pending"]:
        tail += f"\nunfinished: next {data['pending']} (resume with sage-agent run --resume)"
    return head + tabulate(table, headers=columns, floatfmt=".2f") + tail


def _short(value: Any, width: int = 40) -> Any:
    if isinstance(value, str):
        value = value.replace("\n", " ")
        return value if len(value) <= width else value[: width - 1] + "…"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return value


def render_mermaid(agent: SageAgent) -> str:
    return agent.graph.get_graph().draw_mermaid()


def render_html(agent: SageAgent, data: dict[str, Any]) -> str:
    """One HTML file, nothing fetched: the thread's table, the graph (Mermaid source),
    and plots of the run the thread belongs to."""
    run_id = next((t["run_id"] for t in agent.threads() if t["id"] == data["thread"]), None)
    try:
        plots = _plots(agent, run_id) if run_id else []
        missing = ""
    except ImportError:  # matplotlib is the optional "report" extra
        plots, missing = [], "<p>The plots need matplotlib: pip install 'sage-agent[report]'.</p>"
    columns = list(data["rows"][0]) if data["rows"] else []
    rows = "\n".join(
        "<tr class='{}'>{}</tr>".format(
            "fail" if row["failed"] else "pass",
            "".join(f"<td>{html.escape(str(_short(row[c], 60)))}</td>" for c in columns),
        )
        for row in data["rows"]
    )
    images = missing + "\n".join(
        f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{png}'>"
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, png in plots
    )
    result = html.escape(json.dumps(data["result"], indent=1))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sage-agent trace {html.escape(data["thread"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
tr.fail td {{ background: #fde8e8; }} tr.pass td {{ background: #e8f6e8; }}
figure {{ display: inline-block; margin: 1em; }} pre {{ background: #f4f4f4; padding: 1em; }}
</style></head><body>
<h1>Thread {html.escape(data["thread"])}</h1>
<p>{html.escape(data["question"] or "")}</p>
<h2>Result</h2><pre>{result}</pre>
<h2>Steps</h2>
<table><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in columns)}</tr>
{rows}</table>
<h2>Node path</h2><p>{html.escape(" → ".join(data["nodes"]))}</p>
<h2>Run {html.escape(run_id or "")}</h2>
{images or "<p>No steps yet.</p>"}
<h2>Graph (Mermaid)</h2><pre>{html.escape(render_mermaid(agent))}</pre>
</body></html>
"""


def _plots(agent: SageAgent, run_id: str) -> list[tuple[str, str]]:
    """(title, base64 PNG) per plot of the run: anomaly score and step accuracy over the
    stream, cluster sizes, and accuracy before/after per adapter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attempts = []
    for thread in agent.threads(run_id):
        for record in agent.state(thread["id"]).get("records") or []:
            attempts.append(record)
    if not attempts:
        return []
    plots = []

    scores = [r["attempts"][0]["anomaly_score"] for r in attempts]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(scores, ".", markersize=4)
    axis.axhline(agent.trigger.config.threshold, color="red", linewidth=1, label="threshold")
    axis.set(xlabel="step (stream order)", ylabel="anomaly score", ylim=(0, 1))
    axis.legend()
    plots.append(("Anomaly score of first answers over the stream", _png(figure)))

    window = max(5, len(attempts) // 20)
    first = [float(r["first_passed"]) for r in attempts]
    final = [float(r["passed"]) for r in attempts]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(_rolling(first, window), label="first answer")
    axis.plot(_rolling(final, window), label="after retries")
    axis.set(xlabel="step (stream order)", ylabel=f"accuracy (rolling {window})", ylim=(0, 1))
    axis.legend()
    plots.append(("Step accuracy over the stream", _png(figure)))

    clusters = agent.buffer.clusters(with_samples=False)
    if clusters:
        figure, axis = plt.subplots(figsize=(6, 3))
        axis.bar([f"{c.id} ({c.tag})" for c in clusters], [c.size for c in clusters])
        axis.set(xlabel="cluster (tag)", ylabel="failed samples")
        axis.tick_params(axis="x", rotation=45)
        plots.append(("Cluster sizes", _png(figure)))

    adapters = agent.store.adapters(status=None)
    if adapters:
        figure, axis = plt.subplots(figsize=(6, 3))
        labels = [a.id[:6] for a in adapters]
        positions = range(len(adapters))
        axis.bar([p - 0.2 for p in positions], [a.base_val_em for a in adapters], 0.4, label="base")
        axis.bar([p + 0.2 for p in positions], [a.val_em for a in adapters], 0.4, label="adapter")
        axis.set_xticks(list(positions), labels, rotation=45)
        axis.set(ylabel="validation EM on its cluster", ylim=(0, 1))
        axis.legend()
        plots.append(("Before / after per adapter (validation exact match)", _png(figure)))
    return plots


def _rolling(values: list[float], window: int) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()
