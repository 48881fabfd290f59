"""The SAGE graph as a tool under a supervisor agent, as a subgraph of a user's graph,
asynchronously, and with its declared input and output."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from sage_agent import ChatSage, ContextError, SageAgent
from sage_agent.graphs import build_sage_graph
from sage_agent.tasks.decompose import LLMDecomposer
from tests.support.tiny import NINES, SMALL_BUFFER


def _planner(n: int) -> GenericFakeChatModel:
    """A planning model that answers every plan request with one step, 2+7."""
    return GenericFakeChatModel(messages=iter([AIMessage("1. What is 2 plus 7? | 2+7")] * n))


class ToolCaller(BaseChatModel):
    """A supervisor's model: first it calls the tool with a question, then it reports the
    tool's answer."""

    tool_name: str

    @property
    def _llm_type(self) -> str:
        return "tool-caller"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCaller:
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if results:
            message = AIMessage(f"The answer is {results[-1].text}.")
        else:
            call = {"name": self.tool_name, "args": {"question": "2 plus 7?"}, "id": "c1"}
            message = AIMessage("", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.fixture
def agent(tiny_model_dir: Path, tmp_path: Path, bow_embeddings) -> SageAgent:
    agent = SageAgent(
        tmp_path / "sage.db",
        ChatSage(model=str(tiny_model_dir), max_tokens=4),
        embeddings=bow_embeddings,
        buffer_config=SMALL_BUFFER,
        store_config=NINES,
    )
    agent.configure(decomposer=LLMDecomposer(_planner(10)))
    return agent


def test_the_graph_as_a_tool_under_a_supervisor(agent: SageAgent) -> None:
    tool = agent.as_tool()
    supervisor = create_agent(ToolCaller(tool_name=tool.name), tools=[tool])
    state = supervisor.invoke({"messages": [HumanMessage("What is 2 plus 7?")]})
    result = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    assert result.status == "success" and result.artifact["records"][0]["expression"] == "2+7"
    thread = result.artifact["thread_id"]
    assert agent.state(thread)["result"]["answer"] == result.text  # traced in the same db
    assert state["messages"][-1].text == f"The answer is {result.text}."


def test_the_graph_as_a_subgraph(agent: SageAgent) -> None:
    class Parent(TypedDict, total=False):
        question: str
        answer: str | None
        log: Annotated[list[str], operator.add]

    parent = StateGraph(Parent, context_schema=type(agent.context()))
    parent.add_node("sage", build_sage_graph().compile())
    parent.add_node("report", lambda state: {"log": [f"answered {state['answer']!r}"]})
    parent.add_edge(START, "sage")
    parent.add_edge("sage", "report")
    parent.add_edge("report", END)
    graph = parent.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "parent-1"}}
    state = graph.invoke({"question": "What is 2 plus 7?"}, config, context=agent.context())
    assert state["log"] == [f"answered {state['answer']!r}"] and state["answer"] is not None


def test_the_declared_input_and_output(agent: SageAgent) -> None:
    graph = build_sage_graph()
    compiled = graph.compile(checkpointer=InMemorySaver())
    assert set(compiled.get_input_jsonschema()["properties"]) == {"task", "question"}
    assert set(compiled.get_output_jsonschema()["properties"]) == {
        "answer",
        "records",
        "result",
        "thread_id",
    }
    out = compiled.invoke(
        {"question": "What is 2 plus 7?"},
        {"configurable": {"thread_id": "q1"}},
        context=agent.context(),
    )
    assert set(out) <= {"answer", "records", "result", "thread_id"} and out["thread_id"] == "q1"
    empty = compiled.invoke({}, {"configurable": {"thread_id": "q2"}}, context=agent.context())
    assert "takes" in empty["result"]["error"]


def test_a_missing_context_says_what_to_pass(agent: SageAgent) -> None:
    with pytest.raises(ContextError, match="context=SageAgent"):
        build_sage_graph().compile().invoke({"question": "What is 2 plus 7?"})
    with pytest.raises(ContextError, match="got a dict"):
        build_sage_graph(context_schema=dict).compile().invoke(
            {"question": "2+7?"}, context={"db": "x"}
        )


async def test_the_graph_and_the_agent_run_async(agent: SageAgent, tmp_path: Path) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "async.db")) as saver:
        graph = build_sage_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "a1"}}
        events = [
            e
            async for e in graph.astream(
                {"question": "What is 2 plus 7?"},
                config,
                context=agent.context(),
                stream_mode="custom",
            )
        ]
        assert events[0]["event"] == "decomposed" and events[-1]["event"] == "finished"
        state = await graph.aget_state(config)
        assert state.values["result"]["steps"] == 1
    out = (
        await build_sage_graph()
        .compile()
        .ainvoke({"question": "What is 2 plus 7?"}, context=agent.context())
    )
    assert out["records"][0]["expression"] == "2+7"


def test_a_context_as_json_resolves_on_its_database(tmp_path: Path, monkeypatch) -> None:
    from sage_agent.graphs import studio

    made = []
    monkeypatch.setenv("SAGE_STUDIO_ROOT", str(tmp_path))
    monkeypatch.delenv("SAGE_STUDIO_ENGINE", raising=False)

    def build_context(db: str, model, engine=None) -> None:
        made.append((db, model, engine))

    monkeypatch.setattr(studio, "build_context", build_context)
    studio._context.cache_clear()
    context = studio.StudioContext(db="s.db")
    context.resolve()
    context.resolve()
    assert made == [(str(tmp_path.resolve() / "s.db"), studio._model(None), None)]  # once
