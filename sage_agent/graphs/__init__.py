"""LangGraph state machines of sage-agent."""

from sage_agent.graphs.sage import SageState, build_sage_graph

__all__ = ["SageState", "build_sage_graph"]
