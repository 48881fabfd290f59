"""``sage-agent demo``: the embedded default end to end, offline.

Seeded multi-step word problems from the project's own templates run through the SAGE
graph on the embedded SmolLM2-135M until a failed step's cluster has been trained and a
retry with its adapter has answered it right; then a before/after summary and the run's
HTML report (a page per thread beside it). The demo keeps its own database
(``sage-demo.db``), started afresh each time.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from pathlib import Path

from sage_agent.agent import RunSummary, SageAgent
from sage_agent.app.progress import run_with_progress
from sage_agent.buffer import BufferConfig
from sage_agent.database import open_database, transaction
from sage_agent.errors import DatabaseError, RunError
from sage_agent.report import write_run_report
from sage_agent.runs import lease_held, unfinished_run
from sage_agent.store import GateConfig, RecipeConfig, SearchConfig, StoreConfig, adapter_root
from sage_agent.store.registry import ROOT_MARKER
from sage_agent.tasks.problems import generate_problems

DEMO_STORE = StoreConfig(
    search=SearchConfig(
        ranks=(16,),
        learning_rates=(1e-3, 2e-3),
        n_random=3,
        top_k=1,
        max_trials=3,
        max_seconds=200,
    ),
    recipe=RecipeConfig(train_size=96, val_variants=2),
    gate=GateConfig(canary_size=24),
    min_train_samples=20,
)
"""A small search, so that the demo finishes in minutes: 96 training pairs, 3 epochs, all
layers; three configurations each train an eighth of that, the better two go on to half,
the best to the end (successive halving), inside a 200 s budget. The regression gate is
the default one."""

DEMO_OPERATORS = "+*"
"""The demo's problems add and multiply. The 135M model's subtraction failures ("243-8 =
243 + 8") did not improve with LoRA on a cluster's worth of data (docs/store.md),
so a demo on them would train and then have nothing to retry with."""

DEMO_BUFFER = BufferConfig(buffer_size=10)
"""Cluster a tag's failures after 10 of them (the default waits for 25)."""


def run_demo(
    problems: int = 80, seed: int = 0, db: str | Path = "sage-demo.db", engine: str | None = None
) -> int:
    """The demo; with ``engine`` (a vLLM server's URL) the steps are answered there and
    the adapter the demo keeps is registered with it before its retry."""
    started = time.perf_counter()
    db = Path(db)
    _start_afresh(db)
    tasks = [
        {**record, "id": f"demo-{i}"}
        for i, record in enumerate(generate_problems(problems, seed, operators=DEMO_OPERATORS))
    ]
    print(
        f"sage-agent demo: up to {problems} generated word problems, the embedded "
        f"SmolLM2-135M-Instruct, database {db}" + (f", answers from {engine}" if engine else "")
    )
    agent = SageAgent(db, buffer_config=DEMO_BUFFER, store_config=DEMO_STORE, engine=engine)
    with transaction(agent.db):
        agent.db["meta"].upsert({"key": "demo", "value": "1"}, pk="key")
    summary = run_with_progress(
        agent,
        tasks,
        quiet=False,
        train=True,
        options={"data": "generated", "limit": problems, "seed": seed},
        # Stop at the first retry that fixes its step, else after 6 minutes: the task under
        # way then (a search of at most DEMO_STORE.search.max_seconds included) still finishes.
        stop_when=lambda s: s.retry_success > 0 or time.perf_counter() - started > 360,
    )
    _report(agent, summary, time.perf_counter() - started)
    return 0


def _start_afresh(db: Path) -> None:
    """Delete the previous demo's database, adapters and thread pages, and nothing else: a
    database the demo did not make is refused, and only adapter folders leave the adapter
    root."""
    if db.exists() and not _made_by_the_demo(db):
        raise RunError(f"{db} exists and is not a demo database; pick another --db")
    if db.exists() and (run := unfinished_run(open_database(db))) and lease_held(run):
        raise RunError(
            f"a demo is running on {db} ({run['owner']}); wait for it to finish or pick "
            "another --db"
        )
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    for page in db.with_name(f"{db.stem}-report-threads").glob("*.html"):
        page.unlink()  # the previous run's thread pages (its threads had other ids)
    root = adapter_root(db)
    if root.is_dir():
        for entry in root.iterdir():
            if re.fullmatch(r"[0-9a-f]{12}|\.tmp-[0-9a-f]{12}-\d+", entry.name):
                shutil.rmtree(entry, ignore_errors=True)
        (root / ROOT_MARKER).unlink(missing_ok=True)  # it names the database just deleted
        with contextlib.suppress(OSError):  # not empty: something else is in it
            root.rmdir()


def _made_by_the_demo(db: Path) -> bool:
    """Marked by the demo, or (a demo of an earlier sage-agent) holding only runs of
    generated problems."""
    try:
        database = open_database(db)
    except DatabaseError:  # not a sage-agent database at all
        return False
    if next(database["meta"].rows_where("key = 'demo'"), None) is not None:
        return True
    if "runs" not in database.table_names():
        return False
    options = [json.loads(r["options"] or "{}") for r in database["runs"].rows]
    return bool(options) and all(o.get("data") == "generated" for o in options)


def _report(agent: SageAgent, summary: RunSummary, seconds: float) -> None:
    print(
        f"\n{summary.problems} problems, {summary.steps} steps in {seconds:.0f} s: "
        f"{summary.triggers} failures flagged by the Trigger, {summary.clusters} clusters, "
        f"{summary.adapters_trained} adapters trained, {summary.retries} retries, "
        f"{summary.retry_success} fixed by a retry."
    )
    print(
        f"step exact match: {summary.step_em_first:.1%} on first answers, "
        f"{summary.step_em:.1%} after retries; problems solved: {summary.problem_em:.1%}"
    )
    for adapter in agent.store.adapters():
        print(
            f"  adapter {adapter.id} (cluster {adapter.cluster_id}, tag {adapter.tag!r}): "
            f"validation EM {adapter.base_val_em:.0%} base -> {adapter.val_em:.0%}"
        )
    trials = agent.store.registry.trials()
    current = {adapter.id for adapter in agent.store.adapters()}
    for trial in trials:
        # A cluster that grew is searched again; its new adapters retire the earlier ones.
        retired = trial.adapter_id and trial.adapter_id not in current
        print(
            f"  cluster {trial.cluster_id} (version {trial.cluster_version}), trial "
            f"{trial.number}: validation EM {trial.val_em:.0%}: {trial.outcome}"
            + (" (replaced by a later search)" if retired else "")
        )
    if not trials:
        print("No cluster was ready for training within these problems; run more --problems.")
    elif summary.retries == 0:
        print("No adapter passed the regression gate, so there was nothing to retry with.")
    elif summary.retry_success == 0:
        print("Retries ran, but none fixed its step this time.")
    retried = [
        t for t in summary.threads if any(r["retries"] for r in agent.state(t).get("records", []))
    ]
    thread = (retried or summary.threads)[-1]
    out = write_run_report(
        agent, summary.run_id, agent.db_path.with_name(f"{agent.db_path.stem}-report.html")
    )
    print(f"run report: {out}")
    print(f"  a thread with a retry: sage-agent trace {thread} --db {agent.db_path}")
