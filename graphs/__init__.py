"""LangGraph state machines of sage-agent (installed as ``sage_agent.graphs``)."""

from sage_agent.graphs.sage import SageContext, SageState, build_sage_graph, graph

__all__ = ["SageContext", "SageState", "build_sage_graph", "graph"]
