"""LangChain tools of sage-agent (installed as sage_agent.tools)."""
