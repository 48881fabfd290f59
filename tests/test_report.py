"""Traces people read, on a run of the tiny llama that trains an adapter and retries:
node timings in the state, the thread view (graph drawn as SVG, path highlighted, every
checkpoint), the run report (figures, plots, searches, adapters, links), escaping of
what the data and the model wrote, and both pages in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sage_agent.report import read_run, read_thread, render_thread, write_run_report
from sage_agent.report.pages import duration, significant
from sage_agent.report.run import PHASES
from tests.support.browser import CHROMEDRIVER, CHROMIUM, check_page, open_browser, screenshot
from tests.support.tiny import nine_task, nines_agent

HOSTILE = "<script>alert('x')</script>"


def hostile_task() -> dict:
    """A task whose question and step text carry markup: it must stay text in the pages."""
    return {
        "id": f"h{HOSTILE}",
        "question": f"Add 4 and 5 {HOSTILE}.",
        "answer": f"What is <b>the</b> sum {HOSTILE}? ** 4+5 = <<4+5=9>>9\n#### 9",
    }


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(agent, run id, retried thread): a run that trained and fixed a step by a retry."""
    from tests.support.tiny import BagOfWordsEmbeddings

    folder = tmp_path_factory.mktemp("report")
    agent = nines_agent(folder / "sage.db", tiny_model_dir, BagOfWordsEmbeddings())
    tasks = [hostile_task()] + [nine_task(i) for i in range(24)]
    summary = agent.run(tasks, stop_when=lambda s: s.retry_success > 0)
    assert summary.retry_success > 0
    retried = [t for t in summary.threads if any(r["retries"] for r in agent.state(t)["records"])]
    return agent, summary.run_id, retried[-1]


def test_every_node_run_has_its_time(trained) -> None:
    agent, _, thread = trained
    trace = read_thread(agent, thread)
    assert [t["node"] for t in trace.timings] == trace.path
    assert all(t["seconds"] >= 0 for t in trace.timings)
    training = [t for t in trace.timings if t["node"] == "lora_store"]
    assert training and training[0]["seconds"] > 0.5  # a real search, not a no-op
    # each attempt gets its own nodes' seconds: the failed first answer went to the buffer
    first, retry = trace.rows[0], next(r for r in trace.rows if r.node == "retry")
    assert {"route", "answer", "trigger", "buffer"} <= set(first.seconds)
    assert "buffer" not in retry.seconds and "answer" in retry.seconds
    assert sum(sum(r.seconds.values()) for r in trace.rows) <= trace.seconds + 1e-9


def test_checkpoints_read_back_in_order_with_what_each_changed(trained) -> None:
    agent, _, thread = trained
    trace = read_thread(agent, thread)
    steps = [c.step for c in trace.checkpoints]
    assert steps == sorted(steps) and steps[0] == -1
    ran = [node for c in trace.checkpoints for node in c.ran]
    assert ran == trace.path
    decomposed = next(c for c in trace.checkpoints if c.ran == ["decompose"])
    assert "steps" in decomposed.changed and "index" in decomposed.changed
    # a finished thread keeps the state of its last checkpoint and the others' history
    assert [c.values is not None for c in trace.checkpoints] == [False] * (steps.__len__() - 1) + [
        True
    ]
    assert trace.checkpoints[-1].values["result"] == trace.result


def test_the_thread_view_draws_the_graph_and_its_path(trained) -> None:
    agent, _, thread = trained
    page = render_thread(agent, read_thread(agent, thread))
    svg = page[page.index("<svg") : page.index("</svg>")]
    walked = set(re.findall(r'class="node walked[^"]*"><title>(\w+):', svg))
    assert {"decompose", "lora_store", "attach", "retry", "finish"} <= walked
    assert svg.count('class="edge walked') >= 8
    assert "retry fixed it" in page and "node times" in page
    assert "<script" not in page and "href" not in svg and "src=" not in svg  # nothing fetched


def test_the_run_report_shows_figures_searches_and_links(trained, tmp_path: Path) -> None:
    agent, run_id, _ = trained
    run = read_run(agent, run_id)
    assert set(run.phases) <= {*PHASES.values(), "bookkeeping"} and run.phases["training"] > 0
    assert run.searches and all(t.curve for t in run.searches[0].trials)
    out = write_run_report(agent, run_id, tmp_path / "report.html")
    page = out.read_text()
    assert page.count('src="data:image/svg+xml;base64,') >= 6  # every plot of the run
    assert f"{run.summary.step_em_first * 100:.1f}%" in page
    for trial in run.searches[0].trials:
        assert trial.outcome in page
    links = re.findall(r'href="(report-threads/[^"]+)"', page)
    assert len(links) == len(run.threads) and all((tmp_path / link).is_file() for link in links)
    thread_page = (tmp_path / links[0]).read_text()
    assert 'href="../report.html"' in thread_page


def test_what_data_and_model_wrote_stays_text(trained, tmp_path: Path) -> None:
    agent, run_id, _ = trained
    hostile = next(t["id"] for t in agent.threads(run_id) if HOSTILE in t["task_id"])
    pages = [
        render_thread(agent, read_thread(agent, hostile)),
        write_run_report(agent, run_id, tmp_path / "r.html").read_text(),
    ]
    for page in pages:
        assert "<script" not in page and "<b>the</b>" not in page
        assert "&lt;script&gt;" in page
    # the thread's page file name keeps nothing of the markup
    assert all(re.fullmatch(r"[\w.-]+", p.name) for p in (tmp_path / "r-threads").iterdir())


def test_numbers_have_three_significant_digits() -> None:
    assert significant(0.123456) == "0.123" and significant(1234.5678) == "1.23e+03"
    assert significant(None) == "–" and significant(True) == "yes" and significant(7) == "7"
    assert significant(float("nan")) == "–"
    assert duration(0.00002) == "< 1 ms" and duration(0.0123) == "12.3 ms"
    assert duration(5.791) == "5.79 s" and duration(125) == "2 min 05 s"


def test_json_of_a_trace_round_trips(trained) -> None:
    from dataclasses import asdict

    agent, _, thread = trained
    data = json.loads(json.dumps(asdict(read_thread(agent, thread)), default=str))
    assert data["timings"] and data["checkpoints"] and data["rows"][0]["seconds"]


BROWSER = CHROMIUM is not None and CHROMEDRIVER is not None


@pytest.mark.skipif(
    not BROWSER and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
@pytest.mark.system
def test_both_pages_render_in_headless_chromium(trained, tmp_path: Path) -> None:
    agent, run_id, _ = trained
    report = write_run_report(agent, run_id, tmp_path / "report.html")
    thread_page = next((tmp_path / "report-threads").glob("*.html"))
    browser = open_browser(width=1366)
    try:
        for page, pictures in ((report, "images"), (thread_page, "svgs")):
            check = check_page(browser, page)
            assert check.errors == [], page
            assert getattr(check, pictures) >= (6 if pictures == "images" else 1)
            assert check.overflow <= 0, f"{page} scrolls sideways by {check.overflow} px"
            screenshot(browser, page, tmp_path / f"{page.stem}.png", height=2000)
            assert (tmp_path / f"{page.stem}.png").stat().st_size > 10_000
    finally:
        browser.quit()


def test_a_run_is_a_tree_of_runs_for_langsmith(trained) -> None:
    """A LangChain tracer (LangSmith's LangChainTracer is one) sees the graph's run with a
    child run per node, and the model's calls inside the answer node with ChatSage's
    LangSmith parameters, each with its start and end time."""
    from langchain_core.tracers.base import BaseTracer

    class Tracer(BaseTracer):
        def __init__(self) -> None:
            super().__init__()
            self.roots: list = []

        def _persist_run(self, run) -> None:
            self.roots.append(run)

    agent, _, _ = trained
    tracer = Tracer()
    agent.graph.invoke(
        {"task": nine_task(5)},
        {"configurable": {"thread_id": "langsmith"}, "callbacks": [tracer]},
        context=agent.context(train=False),
    )
    (root,) = tracer.roots
    nodes = [child.name for child in root.child_runs]
    assert nodes[:4] == ["decompose", "route", "answer", "trigger"] and nodes[-1] == "finish"
    answer = next(child for child in root.child_runs if child.name == "answer")
    chats = [run for run in answer.child_runs if run.run_type == "llm"]  # base, then adapter
    assert chats and all(c.extra["metadata"]["ls_provider"] == "huggingface-local" for c in chats)
    assert all(c.end_time > c.start_time and c.outputs["generations"] for c in chats)


def test_thread_pages_never_collide_and_fit_a_file_name() -> None:
    from sage_agent.report.pages import thread_file

    names = [thread_file(t) for t in ("r1:q/1", "r1:q?1", "r1:q-1", "x" * 1000)]
    assert len(set(names)) == 4 and all(len(n) < 120 for n in names)
    assert thread_file("r1:q/1") == thread_file("r1:q/1")  # stable
