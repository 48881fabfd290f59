"""Answering through a vLLM server: engine (``VLLMEngine``, the answering model and the
adapters registered with the server), server (starting vLLM for a model) and weights (the
base model as a folder vLLM loads). Training stays in the process that trains."""

from sage_agent.serving.engine import VLLMEngine
from sage_agent.serving.server import ServerLimits, ServerSpec, VLLMServer
from sage_agent.serving.weights import served_weights

__all__ = ["ServerLimits", "ServerSpec", "VLLMEngine", "VLLMServer", "served_weights"]
