"""LangGraph state machines of sage-agent (installed as sage_agent.graphs)."""
