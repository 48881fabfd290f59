"""The adaptation policy: when a routed adapter answers and what an answer teaches."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from sage_agent.errors import CorruptAdapter
from sage_agent.store import AdaptationPolicy, Route
from tests.support.stores import FakeStore

BASE = AIMessage("9")


def test_nothing_routed_means_the_base_model_answers_and_is_kept() -> None:
    policy = AdaptationPolicy(FakeStore())
    assert policy.base_first(Route()) and policy.choose(Route(), BASE) is None
    assert AdaptationPolicy(None).route("Compute 4+5.") == Route()
    assert AdaptationPolicy(FakeStore(), route=False).route("Compute 4+5.") == Route()


@pytest.mark.parametrize(
    ("route_all", "unsure", "route_below", "base_first", "adapter"),
    [
        (False, False, -1.0, True, None),  # a sure base answer is kept
        (False, True, -1.0, True, "a1"),  # an unsure one goes to the adapter
        (True, False, -1.0, False, "a1"),  # a route_all adapter answers at once
        (False, False, None, False, "a1"),  # no gate: the adapter answers at once
    ],
)
def test_the_gate_decides_who_answers(
    route_all: bool, unsure: bool, route_below: float | None, base_first: bool, adapter: str
) -> None:
    policy = AdaptationPolicy(
        FakeStore(route_all=route_all, unsure=unsure, route_below=route_below)
    )
    route = policy.route("Compute 4+5.", "+")
    assert route == Route(("a1",), route_all=route_all, tag="+")
    assert policy.base_first(route) is base_first
    assert policy.choose(route, BASE if base_first else None) == adapter


def test_outcomes_count_uses_keep_canaries_and_buffer_failures() -> None:
    store = FakeStore()
    policy = AdaptationPolicy(store)
    observe = policy.observe
    assert not observe("p", "+", adapter="a1", failed=False, reference="9").buffer
    assert observe("p", "+", adapter="a1", failed=True, reference="9").buffer
    assert store.uses == [("a1", True), ("a1", False)]
    assert not observe("p", "+", adapter=None, failed=False, reference="9", expression="4+5").buffer
    assert observe("p", "+", adapter=None, failed=True, reference="9").buffer
    ((pairs, tag, expressions),) = store.canaries
    assert pairs[0].prompt == "p" and tag == "+" and expressions == ["4+5"]
    # an evaluation keeps no canaries
    AdaptationPolicy(store, learn=False).observe(
        "q", "+", adapter=None, failed=False, reference="1"
    )
    assert len(store.canaries) == 1


def test_an_adapter_that_cannot_load_leaves_the_base_model() -> None:
    store = FakeStore()

    def broken(adapter_id: str) -> str:
        raise CorruptAdapter(f"adapter {adapter_id} is broken")

    store.load = broken  # type: ignore[method-assign]
    with AdaptationPolicy(store).loaded("a1") as (name, note):
        assert name is None and note is not None and "a1 is broken" in note


def test_the_store_evaluates_trials_by_the_same_rule() -> None:
    sure = AdaptationPolicy(FakeStore(unsure=False))
    assert sure.answered_by_adapter(False, [BASE, BASE]) == []
    assert sure.answered_by_adapter(True, [BASE, BASE]) == [0, 1]
    assert AdaptationPolicy(FakeStore(unsure=True)).answered_by_adapter(False, [BASE]) == [0]
