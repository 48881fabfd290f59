"""SageMiddleware in a real ``create_agent`` agent on the tiny llama: failures are scored
and buffered, an adapter is trained after the turn that made its cluster ready, and later
questions are answered with it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from sage_agent import AdaptationPolicy, ChatSage, build_context
from sage_agent.middleware import SageMiddleware, expression_reference
from tests.support.tiny import NINES, SMALL_BUFFER


def _question(i: int) -> str:
    a = 1 + i % 8
    return f"Compute {a}+{9 - a}. Reply with the number only."


@pytest.fixture
def context(tiny_model_dir: Path, tmp_path: Path, bow_embeddings):
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    return build_context(
        tmp_path / "sage.db",
        chat,
        embeddings=bow_embeddings,
        buffer_config=SMALL_BUFFER,
        store_config=NINES,
    )


def test_an_agent_adapts_on_a_stream_of_questions(context) -> None:
    agent = create_agent(context.model, middleware=[SageMiddleware(context)])
    states = [agent.invoke({"messages": [HumanMessage(_question(i))]}) for i in range(24)]
    records = [s["sage_records"][-1] for s in states]
    assert all(r["reference"] == "9" and r["failed"] is not None for r in records)
    first_failure = next(i for i, r in enumerate(records) if r["failed"])
    assert records[first_failure]["cluster_id"] is None  # buffered, not yet clustered
    trained = [i for i, s in enumerate(states) if s.get("sage_trained")]
    assert trained, "no cluster was trained after a turn"
    outcome = states[trained[0]]["sage_trained"][0]
    assert outcome["error"] is None and outcome["adapters"]
    assert states[trained[0]]["sage_ready"] == []
    later = records[trained[0] + 1 :]
    routed = [r for r in later if r["adapter"] is not None]
    assert routed and any(not r["failed"] for r in routed)  # a better answer, routed
    assert context.store.get(routed[0]["adapter"]).uses >= 1
    assert context.model.active_adapter is None  # per-call adapters left it as it was


def test_training_waits_for_approval(context) -> None:
    agent = create_agent(
        context.model,
        middleware=[SageMiddleware(context, train="approve")],
        checkpointer=InMemorySaver(),
    )
    asked = None
    for i in range(24):
        config = {"configurable": {"thread_id": f"t{i}"}}
        state = agent.invoke({"messages": [HumanMessage(_question(i))]}, config)
        if "__interrupt__" in state:
            asked = state["__interrupt__"][0].value
            state = agent.invoke(Command(resume=True), config)
            assert state["sage_trained"][0]["adapters"]
            break
    assert asked is not None and asked["train_clusters"]


def test_another_chat_model_is_recorded_but_never_routed(context) -> None:
    other = GenericFakeChatModel(messages=iter([AIMessage("10")] * 3))
    agent = create_agent(other, middleware=[SageMiddleware(context)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            state = agent.invoke({"messages": [HumanMessage(_question(i))]})
    assert sum("not the context's answering model" in str(w.message) for w in caught) == 1
    record = state["sage_records"][-1]
    assert record["failed"] is True and record["adapter"] is None
    assert context.buffer.buffered()  # failures are still recorded


def test_a_tool_call_is_not_scored_the_answer_after_it_is(context) -> None:
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    class ToolCalling(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):  # type: ignore[no-untyped-def]
            return self

    call = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 4, "b": 5}, "id": "c1"}])
    other = ToolCalling(messages=iter([call, AIMessage("The answer is 7.")]))
    agent = create_agent(other, tools=[add], middleware=[SageMiddleware(context)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not the context's ChatSage: said once
        state = agent.invoke(
            {"messages": [HumanMessage("Compute 4+5. Reply with the number only.")]}
        )
    first, last = state["sage_records"]
    assert first["failed"] is None and first["note"].startswith("a tool call")
    assert last["failed"] is True and last["reference"] == "9"
    assert len(context.buffer.buffered()) == 1  # the answer's failure, once


def test_a_reference_that_is_unknown_leaves_the_answer_unscored(context) -> None:
    agent = create_agent(context.model, middleware=[SageMiddleware(context)])
    state = agent.invoke({"messages": [HumanMessage("Tell me about Paris.")]})
    record = state["sage_records"][-1]
    assert record["reference"] is None and record["failed"] is None
    assert expression_reference.__doc__ and context.buffer.buffered() == []


async def test_the_agent_works_async(context) -> None:
    agent = create_agent(context.model, middleware=[SageMiddleware(context)])
    state = await agent.ainvoke({"messages": [HumanMessage(_question(3))]})
    assert state["sage_records"][-1]["reference"] == "9"


def test_a_reference_that_raises_leaves_the_answer_unscored(context) -> None:
    def broken(_request, _answer):
        raise RuntimeError("checker down")

    agent = create_agent(context.model, middleware=[SageMiddleware(context, reference=broken)])
    with pytest.warns(UserWarning, match="reference raised RuntimeError: checker down"):
        state = agent.invoke({"messages": [HumanMessage(_question(1))]})
    record = state["sage_records"][-1]
    assert record["failed"] is None and "checker down" in record["note"]
    assert context.buffer.buffered() == []  # nothing written half


def test_the_middleware_answers_as_the_policy_decides(tiny_chat, bow_embeddings) -> None:
    """The base model answers first and its sure answer is kept; an adapter that routes
    all answers at once, without a base call."""
    from types import SimpleNamespace

    from langchain.agents.middleware.types import ModelRequest, ModelResponse

    from sage_agent import Trigger, arithmetic_verifier
    from tests.support.stores import FakeStore

    calls: list[str | None] = []
    for route_all in (False, True):
        store = FakeStore(route_all=route_all, unsure=False)
        context = SimpleNamespace(
            model=tiny_chat,
            engine=None,
            answerer=tiny_chat,
            store=store,
            buffer=None,
            train=False,
            trigger=Trigger(embeddings=bow_embeddings, verifier=arithmetic_verifier),
            policy=AdaptationPolicy(store),
        )
        middleware = SageMiddleware(context)  # type: ignore[arg-type]

        def handler(request: ModelRequest) -> ModelResponse:
            calls.append(request.model_settings.get("adapter"))
            return ModelResponse(result=[AIMessage("9")])

        request = ModelRequest(model=tiny_chat, messages=[HumanMessage("Compute 4+5.")])
        answered = middleware.wrap_model_call(request, handler)
        record = answered.command.update["sage_records"][0]
        assert record["adapter"] == ("a1" if route_all else None)
        assert store.uses == ([("a1", True)] if route_all else [])
    # the base model was sure, so the first call kept its answer; the second went
    # straight to the adapter
    assert calls == [None, "a1"]

    # With the contest, a route-all adapter answers after the base model, and where the
    # model is surer of the base answer, that answer is the turn's.
    calls.clear()
    store = FakeStore(route_all=True, unsure=False, contest=True, surer=False)
    context.store, context.policy = store, AdaptationPolicy(store)
    answered = SageMiddleware(context).wrap_model_call(request, handler)  # type: ignore[arg-type]
    record = answered.command.update["sage_records"][0]
    assert calls == [None, "a1"] and record["adapter"] is None and not store.uses
    assert "surer" in record["note"]


def test_a_classification_step_adapts_with_a_label_reference(context) -> None:
    """A yes / no / maybe judgement adapts as a sum does: the PubMedQA family judges the
    answer against the label the reference gives and tags the failures."""
    middleware = SageMiddleware(
        context, reference=lambda _request, _answer: "yes", family="pubmedqa"
    )
    agent = create_agent(context.model, middleware=[middleware])
    questions = [
        f"Did treatment {i} help the patients?\nAnswer yes, no or maybe." for i in range(24)
    ]
    states = [agent.invoke({"messages": [HumanMessage(q)]}) for q in questions]
    records = [s["sage_records"][-1] for s in states]
    assert all(r["reference"] == "yes" and r["failed"] is not None for r in records)
    trained = [i for i, s in enumerate(states) if s.get("sage_trained")]
    assert trained and states[trained[0]]["sage_trained"][0]["adapters"]
    adapter = context.store.get(states[trained[0]]["sage_trained"][0]["adapters"][0])
    assert adapter.tag == "pubmedqa"
    routed = [r for r in records[trained[0] + 1 :] if r["adapter"] is not None]
    assert routed and any(not r["failed"] for r in routed)
    # a checker of one's own decides instead of the family's judge
    strict = SageMiddleware(context, family="pubmedqa", judge=lambda answer, ref: answer == ref)
    assert strict.judge("Yes.", "yes") is False and middleware.judge("Yes.", "yes") is True
