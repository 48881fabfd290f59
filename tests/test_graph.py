"""The SAGE graph and SageAgent on the tiny llama: the full trigger -> buffer -> lora_store
-> attach -> retry cycle, records in state (not dependencies), resume after a crash, the
trace, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from sage_agent import SageAgent
from sage_agent.context import SageContext
from sage_agent.graphs import build_sage_graph
from sage_agent.records import SageEvent
from sage_agent.report import read_thread, render_table
from sage_agent.store import StoreConfig
from sage_agent.tasks.decompose import socratic_decomposer
from sage_agent.tasks.plans import PLAN_TAG
from tests.support.tiny import nine_task, nines_agent


@pytest.fixture
def agent(tiny_model_dir: Path, tmp_path: Path, bow_embeddings) -> SageAgent:
    return nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)


def test_failures_train_an_adapter_and_the_retry_fixes_the_step(agent: SageAgent) -> None:
    events = []
    summary = agent.run(
        [nine_task(i) for i in range(24)],
        on_event=events.append,
        stop_when=lambda s: s.retry_success > 0,
    )
    names = [e["event"] for e in events]
    assert "training" in names and "trial_done" in names and "attached" in names
    # every event is one of the typed stream events, with its keys
    kinds = {get_args(get_type_hints(kind)["event"])[0]: kind for kind in get_args(SageEvent)}
    for event in events:
        kind = kinds[event["event"]]
        assert (
            kind.__required_keys__ <= set(event) <= kind.__required_keys__ | kind.__optional_keys__
        )
    assert summary.adapters_trained >= 1 and summary.retries >= 1
    assert summary.retry_success >= 1
    assert summary.step_em > summary.step_em_first
    retried = [t for t in summary.threads if any(r["retries"] for r in agent.state(t)["records"])]
    trace = read_thread(agent, retried[-1])
    outcomes = [row.outcome for row in trace.rows]
    assert outcomes[0] == "fail" and "retry fixed it" in outcomes
    assert trace.path[:4] == ["decompose", "route", "answer", "trigger"]
    assert {"buffer", "lora_store", "attach", "retry"} <= set(trace.path)
    assert "retry fixed it" in render_table(trace)
    # the store's adapters are registered and the routed ones are used afterwards
    assert agent.store.adapters()


def test_a_sure_base_answer_is_kept_and_its_adapter_saved_for_the_retry(
    agent: SageAgent,
) -> None:
    agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0)
    adapters = [a.id for a in agent.store.route("Compute 2+7. Reply with the number only.")]
    assert adapters
    agent.store.unsure = lambda _answer, _tag=None: False  # the base model is sure of every answer
    agent.run([nine_task(3)])
    first, *retries = agent.state(agent.threads()[-1]["id"])["records"][0]["attempts"]
    assert first["adapter"] is None and first["note"] == "the base model is sure; not routed"
    # the random base model's sure answer is wrong: while adapting, the routed adapter is
    # tried next (route-only runs, train=False, make no retries)
    assert first["failed"] and retries[0]["adapter"] == adapters[0]
    # buffered as the base model's failure: the tag's accuracy counts it
    last = agent.buffer.points()[-1].sample
    assert "adapter" in last.payload and last.payload["adapter"] is None

    agent.store.unsure = lambda _answer, _tag=None: True
    agent.run([nine_task(4)], train=False)
    (first, *_) = agent.state(agent.threads()[-1]["id"])["records"][0]["attempts"]
    assert first["routed"] and first["adapter"] == adapters[0] and "base_answer" in first

    # An adapter whose gate chose to answer every step routed to it answers sure base
    # answers too; its answer stands where the model is surer of it (the contest).
    with agent.db.conn:
        agent.db["adapters"].update(adapters[0], {"route_all": 1})
    agent.store.unsure = lambda _answer, _tag=None: False
    agent.store.surer = lambda _adapted, _base, _tag=None: True
    agent.run([nine_task(5)], train=False)
    (first, *_) = agent.state(agent.threads()[-1]["id"])["records"][0]["attempts"]
    assert first["routed"] and first["route_all"] and first["adapter"] == adapters[0]
    assert "base_answer" in first

    # ... and where the model is surer of the base answer, that answer stands
    agent.store.surer = lambda _adapted, _base, _tag=None: False
    agent.run([nine_task(6)], train=False)
    (first, *_) = agent.state(agent.threads()[-1]["id"])["records"][0]["attempts"]
    assert first["adapter"] is None and not first["routed"] and "adapter_answer" in first
    assert first["note"].startswith("the base model is surer of its answer than adapter")

    # Without the contest, a route-all adapter skips the base model.
    agent.store.config = agent.store.config.replace(contest=False)
    agent.run([nine_task(7)], train=False)
    (first, *_) = agent.state(agent.threads()[-1]["id"])["records"][0]["attempts"]
    assert first["routed"] and first["adapter"] == adapters[0] and "base_answer" not in first


def test_when_every_routed_adapter_fails_the_base_model_answers_last(agent: SageAgent) -> None:
    agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0)
    agent.store.unsure = lambda _answer, _tag=None: True  # every step goes to its adapters
    five = {"id": "five", "question": "Add 2 and 3.", "answer": "** 2+3 = <<2+3=5>>5\n#### 5"}
    events: list[dict] = []
    agent.run([five], on_event=events.append)
    record = agent.state(agent.threads()[-1]["id"])["records"][0]
    first, *retries = record["attempts"]
    # the adapters learned "9": each fails, then the base model answers, once and last
    assert first["routed"] and first["adapter"] is not None and first["failed"]
    assert retries and retries[-1]["adapter"] is None and retries[-1]["kind"] == "retry"
    assert all(a["adapter"] is not None for a in retries[:-1])
    assert [e["adapter"] for e in events if e["event"] == "retry"][-1] is None
    # a pass by the base model's answer would not count as an adapter's fix
    assert not record["retry_success"]
    outcome = read_thread(agent, agent.threads()[-1]["id"]).rows[-1].outcome
    assert outcome in ("retry failed", "base model's answer kept")


def test_state_holds_records_not_dependencies(agent: SageAgent) -> None:
    agent.run([nine_task(1)])
    values = agent.state(agent.threads()[-1]["id"])
    records = {k: v for k, v in values.items() if k != "store_calls"}
    json.dumps(records)  # plain data only: no model, store or buffer in the state
    assert values["result"]["steps"] == 1


def test_a_killed_run_resumes_from_its_checkpoint(agent: SageAgent) -> None:
    calls = {"n": 0}
    real = agent.trigger.score

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the process were stopped here
        return real(*args, **kwargs)

    task = {
        "id": "two-steps",
        "question": "q",
        "answer": "a? ** 2+5 = <<2+5=7>>7\nb? ** 7-1 = <<7-1=6>>6\n#### 6",
    }
    agent.trigger.score = crash_on_second
    with pytest.raises(KeyboardInterrupt):
        agent.run([task])
    run = agent.unfinished_run()
    assert run is not None
    thread = agent.threads(run["id"])[0]["id"]
    assert len(agent.state(thread)["records"]) == 1  # the first step was checkpointed
    summary = agent.run([task], run_id=run["id"])
    records = agent.state(thread)["records"]
    assert [r["index"] for r in records] == [0, 1]  # nothing redone, nothing lost
    assert summary.steps == 2 and agent.unfinished_run() is None


def test_answers_mode_substitutes_earlier_answers(agent: SageAgent) -> None:
    task = {
        "id": "chain",
        "question": "q",
        "answer": "a? ** 2+5 = <<2+5=7>>7\nb? ** 7*3 = <<7*3=21>>21\n#### 21",
    }
    context = agent.context(train=False, substitute="answers")
    agent.solve(task, thread_id="chain", context=context)
    first, second = agent.state("chain")["records"]
    assert second["depends_on"] == [0]
    prompt = second["attempts"][0]["prompt"]
    from sage_agent.scoring.numeric import parse_number

    value = parse_number(first["answer"])
    if value is None:  # the random model may answer without a number
        assert "7*3" in prompt and second["attempts"][0]["note"]
    else:
        assert "7*3" not in prompt or value == 7


def test_decompose_errors_end_the_task_with_an_error(agent: SageAgent) -> None:
    agent.run([{"id": "bad", "question": "q", "answer": "no annotations\n#### 3"}])
    values = agent.state(agent.threads()[-1]["id"])
    assert "calculator annotations" in values["error"]
    summary = agent.summarize(agent.threads()[-1]["run_id"])
    assert summary.errors and summary.steps == 0


def test_unknown_thread(agent: SageAgent) -> None:
    with pytest.raises(KeyError, match="no thread 'nope'"):
        read_thread(agent, "nope")


def test_graph_has_the_design_nodes_and_a_context_schema() -> None:
    graph = build_sage_graph()
    assert set(graph.nodes) == {
        "decompose",
        "route",
        "answer",
        "trigger",
        "buffer",
        "lora_store",
        "attach",
        "retry",
        "advance",
        "finish",
        "train_planner",
    }
    assert graph.context_schema is SageContext
    assert SageContext.__dataclass_fields__["decomposer"].default is socratic_decomposer


def test_an_adapter_removed_mid_run_is_noted_and_the_base_model_answers(
    agent: SageAgent,
) -> None:
    agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0)
    routed = agent.store.route("Compute 2+7. Reply with the number only.")
    assert routed
    for record in agent.store.adapters():  # another process removes them ...
        agent.store.registry.remove(record.id)
    agent.store.route = lambda text, tag=None, **_: routed  # ... right after this step was routed
    agent.store.unsure = lambda _answer, _tag=None: True
    summary = agent.run([nine_task(5)], train=False)
    first = agent.state(summary.threads[0])["records"][0]["attempts"][0]
    assert first["adapter"] is None and f"adapter {routed[0].id} not used" in first["note"]
    assert summary.problems == 1 and summary.errors == []


def test_a_search_gets_what_is_left_of_the_run_adaptation_budget() -> None:
    from types import SimpleNamespace

    from sage_agent.context import MIN_SEARCH_SECONDS, AdaptationBudget
    from sage_agent.graphs.store_calls import store_call

    ready = SimpleNamespace(size=20, trained_version=None, tag="+")
    context = SimpleNamespace(
        train=True,
        store=SimpleNamespace(config=StoreConfig()),  # its searches: 300 s
        buffer=SimpleNamespace(cluster=lambda _id: ready),
        budget_seconds=None,
        adaptation=AdaptationBudget(1000.0),
        planner=None,
    )

    def budget_of_call(spent: float) -> float | None:
        context.adaptation.spent = spent
        call = store_call(context, 1)
        return None if call is None else call.tool_calls[0]["args"]["budget_seconds"]

    assert budget_of_call(0.0) == 300.0
    assert budget_of_call(800.0) == 200.0
    assert budget_of_call(1000.0 - MIN_SEARCH_SECONDS + 1) is None  # too little to start
    context.adaptation = None  # no run budget: the call leaves the search's to the store
    assert store_call(context, 1).tool_calls[0]["args"]["budget_seconds"] is None


def test_with_a_planner_the_step_clusters_leave_the_plan_clusters_share() -> None:
    from types import SimpleNamespace

    from sage_agent.context import PLANNER_SHARE, AdaptationBudget
    from sage_agent.graphs.store_calls import store_call

    clusters = {1: SimpleNamespace(size=20, trained_version=None, tag="+")}
    clusters[2] = SimpleNamespace(size=20, trained_version=None, tag=PLAN_TAG)
    context = SimpleNamespace(
        train=True,
        store=SimpleNamespace(config=StoreConfig()),  # its searches: 300 s
        buffer=SimpleNamespace(cluster=clusters.__getitem__),
        budget_seconds=None,
        adaptation=AdaptationBudget(720.0),
        planner=object(),
    )

    def budget_of_call(cluster_id: int) -> float | None:
        call = store_call(context, cluster_id)
        return None if call is None else call.tool_calls[0]["args"]["budget_seconds"]

    kept = 720.0 * PLANNER_SHARE  # 240 s
    assert budget_of_call(1) == 300.0
    context.adaptation.charge(400.0)  # the steps' searches
    assert budget_of_call(1) == pytest.approx(720.0 - 400.0 - kept)  # 80 s
    context.adaptation.charge(30.0)
    assert budget_of_call(1) is None  # 50 s above the planner's share: no step search
    assert budget_of_call(2) == pytest.approx(290.0)  # the plan cluster may spend it all
    context.adaptation.charge(200.0, planner=True)
    assert context.adaptation.kept_for_planner == pytest.approx(kept - 200.0)
    context.planner = None  # no planner: nothing kept
    assert budget_of_call(1) == pytest.approx(90.0)

    # with the CLI's 120 s searches, the plan cluster's search is given its whole share
    context.budget_seconds, context.planner = 120.0, object()
    context.adaptation = AdaptationBudget(720.0)
    assert budget_of_call(1) == 120.0
    assert budget_of_call(2) == pytest.approx(kept)
    context.adaptation.charge(200.0, planner=True)
    assert budget_of_call(2) == 120.0  # a later search: one search's budget, all that is left


def test_store_calls_are_timed_and_a_resumed_run_keeps_what_it_spent(agent: SageAgent) -> None:
    from sage_agent.context import AdaptationBudget

    agent.configure(adaptation=AdaptationBudget(3600.0))
    summary = agent.run(
        [nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0
    )
    calls = [m for t in summary.threads for m in agent.state(t).get("store_calls") or []]
    assert calls[0].tool_calls[0]["args"]["budget_seconds"] == 300.0  # the store's own
    seconds = [m.response_metadata["seconds"] for m in calls[1::2]]
    assert seconds and all(s > 0 for s in seconds)
    assert summary.adapt_s == pytest.approx(sum(seconds))
    # Resumed, the run starts from what its threads spent, not from a fresh budget.
    with agent.db.conn:
        agent.db["runs"].update(summary.run_id, {"finished": None, "owner": None})
    seen = []
    agent.solve = lambda task, *, context, **_: seen.append(context.adaptation.spent)
    agent.run([nine_task(100)], run_id=summary.run_id)
    assert seen == [pytest.approx(summary.adapt_s)]
