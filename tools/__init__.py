"""LangChain tools of sage-agent (installed as sage_agent.tools)."""

from sage_agent.tools.lora_store import LoRAStoreTool, RouteAdapterTool

__all__ = ["LoRAStoreTool", "RouteAdapterTool"]
