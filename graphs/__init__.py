"""LangGraph state machines of sage-agent."""

from sage_agent.graphs.sage import build_sage_graph
from sage_agent.graphs.state import SageInput, SageOutput, SageState

__all__ = ["SageInput", "SageOutput", "SageState", "build_sage_graph"]
