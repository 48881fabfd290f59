"""The SAGE graph as a node of your own LangGraph StateGraph.

python examples/graph_as_subgraph.py [--db subgraph.db]

The parent state shares the graph's input and output keys (``task``, ``answer``); the
parent's runtime context (a SageContext) reaches the subgraph.
"""

import argparse
import operator
from typing import Annotated

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from sage_agent import SageAgent, SageContext
from sage_agent.graphs import build_sage_graph
from sage_agent.tasks.problems import generate_problems

parser = argparse.ArgumentParser()
parser.add_argument("--db", default="subgraph.db")
args = parser.parse_args()


class Report(TypedDict, total=False):
    task: dict
    answer: str | None
    log: Annotated[list[str], operator.add]


def report(state: Report) -> Report:
    return {"log": [f"{state['task']['question']} -> {state['answer']!r}"]}


parent = StateGraph(Report, context_schema=SageContext)
parent.add_node("sage", build_sage_graph().compile())
parent.add_node("report", report)
parent.add_edge(START, "sage")
parent.add_edge("sage", "report")
parent.add_edge("report", END)
graph = parent.compile(checkpointer=InMemorySaver())

agent = SageAgent(args.db)  # the embedded model; its context is what the subgraph runs with
task = {**generate_problems(1, seed=3)[0], "id": "example"}
state = graph.invoke({"task": task}, {"configurable": {"thread_id": "p1"}}, context=agent.context())
print("\n".join(state["log"]))
