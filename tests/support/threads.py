"""Many threads on one SageContext: middleware turns (``batch`` and ``abatch``) and graph
runs mixed, on the tiny llama, with what each wrote counted afterwards."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage

from sage_agent import SageContext
from sage_agent.checkpoints import sqlite_checkpointer
from sage_agent.graphs import build_sage_graph
from sage_agent.middleware import SageMiddleware
from tests.support.tiny import nine_task

TURNS_PER_BATCH = 4


@dataclass
class ThreadsReport:
    seconds: float
    threads: int
    turns: int = 0
    """Middleware turns (one question each) that ended."""
    graph_runs: int = 0
    failures: int = 0
    """Answers the Trigger failed, by the turns' records and the graph's first attempts."""
    samples: int = 0
    """Samples in the Trigger Buffer afterwards."""
    searches_twice: int = 0
    """Cluster versions whose trials were logged by more than one search."""
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.failures - self.samples


def _question(i: int) -> str:
    a = 1 + i % 8
    return f"Compute {a}+{9 - a}. Reply with the number only."


def run_threads(context: SageContext, db: Path, *, threads: int, seconds: float) -> ThreadsReport:
    """``threads`` threads share ``context`` for ``seconds``; each repeats a middleware
    ``batch`` of turns, an ``abatch`` of turns and a graph run of one task."""
    agent = create_agent(context.model, middleware=[SageMiddleware(context)])
    graph = build_sage_graph().compile(checkpointer=sqlite_checkpointer(db))
    report = ThreadsReport(seconds, threads)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def count(turns: int = 0, runs: int = 0, failures: int = 0) -> None:
        with lock:
            report.turns, report.graph_runs = report.turns + turns, report.graph_runs + runs
            report.failures += failures

    def turns(states: list[dict]) -> None:
        failed = sum(bool(r["failed"]) for s in states for r in s.get("sage_records", []))
        count(turns=len(states), failures=failed)

    def work(k: int) -> None:
        i = 0
        try:
            while time.monotonic() < deadline:
                asked = [
                    {"messages": [HumanMessage(_question(k + i + j))]}
                    for j in range(TURNS_PER_BATCH)
                ]
                turns(agent.batch(asked))
                turns(asyncio.run(agent.abatch(asked)))
                config = {"configurable": {"thread_id": f"w{k}-{i}"}}
                state = graph.invoke({"task": nine_task(k * 1000 + i)}, config, context=context)
                failed = sum(r["attempts"][0]["failed"] for r in state.get("records", []))
                count(runs=1, failures=failed)
                i += 1
        except BaseException as error:
            with lock:
                report.errors.append(f"thread {k}: {type(error).__name__}: {error}")

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    connection = sqlite3.connect(db)
    report.samples = connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    searches = Counter(
        connection.execute("SELECT cluster_id, cluster_version, number FROM trials").fetchall()
    )
    report.searches_twice = sum(n > 1 for n in searches.values())
    connection.close()
    return report
