"""The run report's pictures, drawn with matplotlib as SVG data URIs (each image keeps
its own ids, and the page needs no script to show them)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
from sklearn.decomposition import PCA

from sage_agent.buffer import FailurePoint
from sage_agent.report.run import Search, StreamStep
from sage_agent.store import AdapterRecord, TrialRecord

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False})
plt.rcParams.update({"axes.spines.right": False})
_WIDE, _SQUARE = (6.4, 2.8), (5.2, 4.0)


def _uri(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def rolling(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it."""
    sums = np.cumsum([0.0, *values])
    return [
        (sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window)
        for i in range(len(values))
    ]


def accuracy_over_stream(stream: Sequence[StreamStep]) -> str:
    window = max(5, len(stream) // 15)
    figure, axis = plt.subplots(figsize=_WIDE)
    # after retries >= first answer: drawn wide underneath, so that both lines show
    after = rolling([s.passed for s in stream], window)
    axis.plot(after, color="C1", linewidth=4, alpha=0.45, label="after retries")
    axis.plot(rolling([s.first_passed for s in stream], window), color="C0", label="first answer")
    routed = [i for i, s in enumerate(stream) if s.routed]
    if routed:
        axis.plot(routed, [1.02] * len(routed), "|", color="C2", label="routed to an adapter")
    axis.set(xlabel="step, in stream order", ylabel=f"step EM, rolling {window}", ylim=(0, 1.05))
    axis.legend(loc="lower right", frameon=False)
    return _uri(figure)


def anomaly_scores(stream: Sequence[StreamStep], threshold: float) -> str:
    figure, axis = plt.subplots(figsize=_WIDE)
    scores = [s.anomaly_score if s.anomaly_score is not None else math.nan for s in stream]
    colours = ["C3" if not s.first_passed else "C0" for s in stream]
    axis.scatter(range(len(scores)), scores, s=9, c=colours)
    axis.axhline(threshold, color="C3", linewidth=1, linestyle="--", label="threshold")
    axis.set(xlabel="step, in stream order", ylabel="anomaly score", ylim=(0, 1))
    axis.legend(loc="upper right", frameon=False)
    return _uri(figure)


def failure_map(points: Sequence[FailurePoint]) -> str | None:
    """The failures' embeddings projected on their first two principal components,
    coloured by cluster; noise and waiting samples grey."""
    if len(points) < 3:
        return None
    xy = PCA(n_components=2).fit_transform(np.stack([p.embedding for p in points]))
    figure, axis = plt.subplots(figsize=_SQUARE)
    loose = [i for i, p in enumerate(points) if p.cluster_id is None]
    axis.scatter(xy[loose, 0], xy[loose, 1], s=12, c="#bbb", marker="x", label="not clustered")
    for position, cluster in enumerate(sorted({p.cluster_id for p in points} - {None})):
        members = [i for i, p in enumerate(points) if p.cluster_id == cluster]
        tag = points[members[0]].sample.tag
        axis.scatter(
            xy[members, 0], xy[members, 1], s=16, color=f"C{position % 10}",
            label=f"cluster {cluster} ({tag}, {len(members)})",
        )  # fmt: skip
    axis.set(xlabel="PC 1", ylabel="PC 2")
    axis.legend(fontsize=7, frameon=False, loc="best")
    return _uri(figure)


def loss_curves(search: Search) -> str | None:
    trials = [t for t in search.trials if t.curve]
    if not trials:
        return None
    figure, axis = plt.subplots(figsize=(4.6, 2.8))
    for trial in trials:
        kept = trial.outcome == "kept"
        axis.plot(
            range(1, len(trial.curve) + 1), trial.curve, linewidth=1.6 if kept else 0.9,
            linestyle="-" if kept else "--", label=f"#{trial.number}" + (" kept" if kept else ""),
        )  # fmt: skip
    axis.set(xlabel="optimiser step", ylabel="training loss", yscale="log")
    axis.legend(fontsize=7, frameon=False, ncol=2)
    return _uri(figure)


def rank_learning_rate_map(trials: Sequence[TrialRecord]) -> str | None:
    """Every trial at its (learning rate, rank), coloured by validation EM: the picture of
    the paper's search space."""
    ran = [t for t in trials if not t.outcome.startswith("failed")]
    if not ran:
        return None
    figure, axis = plt.subplots(figsize=_SQUARE)
    rates = [t.config["learning_rate"] for t in ran]
    ranks = [t.config["rank"] for t in ran]
    dots = axis.scatter(
        rates, ranks, c=[t.val_em for t in ran], cmap="viridis", vmin=0, vmax=1, s=46,
        edgecolors=["red" if t.outcome == "kept" else "none" for t in ran], linewidths=1.5,
    )  # fmt: skip
    figure.colorbar(dots, ax=axis, label="validation EM")
    axis.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="LoRA rank")
    axis.set_yticks(sorted(set(ranks)), [str(r) for r in sorted(set(ranks))])
    axis.set_title("red ring: kept", fontsize=8)
    return _uri(figure)


def before_after(adapters: Sequence[AdapterRecord]) -> str | None:
    if not adapters:
        return None
    figure, axis = plt.subplots(figsize=(max(3.5, 0.7 * len(adapters) + 2), 2.8))
    positions = np.arange(len(adapters))
    axis.bar(positions - 0.2, [a.base_val_em for a in adapters], 0.4, label="base model")
    axis.bar(positions + 0.2, [a.val_em for a in adapters], 0.4, label="with the adapter")
    axis.set_xticks(positions, [f"{a.id[:6]}\n{a.tag}" for a in adapters], fontsize=7)
    axis.set(ylabel="validation EM, its cluster", ylim=(0, 1.05))
    axis.legend(fontsize=7, frameon=False)
    return _uri(figure)


def time_split(phases: dict[str, float]) -> str | None:
    if not phases:
        return None
    names = sorted(phases, key=phases.__getitem__, reverse=True)
    figure, axis = plt.subplots(figsize=(6.4, 0.5 + 0.3 * len(names)))
    axis.barh(names, [phases[n] for n in names], color="C0")
    axis.invert_yaxis()
    axis.set(xlabel="seconds")
    return _uri(figure)
