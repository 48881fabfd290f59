"""The HTML pages: a run report and a thread view, rendered with Jinja2 (autoescaped:
every text from the data or the model stays text). Each page is one file that opens from
disk: styles inline, pictures as data URIs, no script needed to read it."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from sage_agent.agent import SageAgent
from sage_agent.report.graph_svg import graph_svg
from sage_agent.report.plots import (
    accuracy_over_stream,
    anomaly_scores,
    before_after,
    failure_map,
    loss_curves,
    rank_learning_rate_map,
    time_split,
)
from sage_agent.report.run import read_run
from sage_agent.report.thread import METRICS, ThreadTrace, read_thread


def significant(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant digits; None as a dash; anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{1000 * seconds:.3g} ms" if seconds >= 0.001 else "< 1 ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def when(epoch: float | None) -> str:
    return "–" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def as_json(value: Any) -> str:
    return json.dumps(value, indent=1, default=str, ensure_ascii=False)


_ENVIRONMENT = Environment(
    loader=PackageLoader("sage_agent.report", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.filters.update(sig=significant, pct=percent, dur=duration, when=when)
_ENVIRONMENT.filters["json"] = as_json


def thread_file(thread_id: str) -> str:
    """A thread's page name: its id with every character unsafe in a file name replaced,
    cut to 80 characters, and a digest of the whole id, so two ids never share a page
    ("r1:q/1" and "r1:q?1") and no id is too long for a file name."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "-", thread_id)[:80]
    digest = hashlib.sha256(thread_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{readable}-{digest}.html"


def render_thread(agent: SageAgent, trace: ThreadTrace, *, report: str | None = None) -> str:
    """A thread's page: the graph with its path, every attempt with its node times, and
    every checkpoint's state. ``report``: the run report's address, for a link back."""
    steps: dict[int, list[Any]] = {}
    for row in trace.rows:
        steps.setdefault(row.step, []).append(row)
    totals: dict[str, list[float]] = {}
    for timing in trace.timings:
        totals.setdefault(timing["node"], []).append(timing["seconds"])
    return _ENVIRONMENT.get_template("thread.html.j2").render(
        trace=trace,
        steps=steps,
        metrics=METRICS,
        totals=sorted(totals.items(), key=lambda item: -sum(item[1])),
        graph=graph_svg(agent.graph.get_graph(), trace.path),
        report=report,
    )


def write_run_report(agent: SageAgent, run_id: str, out: Path) -> Path:
    """The run report at ``out``, and a page per thread in the folder beside it
    (``<out's name>-threads/``). Returns ``out``."""
    run = read_run(agent, run_id)
    folder = out.with_name(f"{out.stem}-threads")
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for row in run.threads:
        page = render_thread(agent, read_thread(agent, row.thread), report=f"../{out.name}")
        (folder / thread_file(row.thread)).write_text(page, encoding="utf-8")
        links[row.thread] = f"{folder.name}/{thread_file(row.thread)}"
    trials = [t for search in run.searches for t in search.trials]
    pictures = {
        "accuracy": accuracy_over_stream(run.stream) if run.stream else None,
        "anomaly": anomaly_scores(run.stream, run.threshold) if run.stream else None,
        "failures": failure_map(run.points),
        "search_map": rank_learning_rate_map(trials),
        "before_after": before_after(run.adapters),
        "time": time_split(run.phases),
    }
    curves = {(s.cluster_id, s.cluster_version): loss_curves(s) for s in run.searches}
    page = _ENVIRONMENT.get_template("run.html.j2").render(
        run=run,
        summary=run.summary,
        pictures=pictures,
        curves=curves,
        links=links,
        busy=sum(run.phases.values()),
        wall=(run.finished or time.time()) - run.started,
    )
    out.write_text(page, encoding="utf-8")
    return out
