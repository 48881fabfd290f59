"""sage-agent: trigger-guided LoRA self-adaptation (SAGE) for local models in LangChain."""

from sage_agent.agent import RunSummary, SageAgent
from sage_agent.buffer import Assignment, BufferConfig, Cluster, TriggerBuffer
from sage_agent.chat_model import ChatSage, UnknownModelError
from sage_agent.database import DatabaseError, DatabaseLocked, SchemaVersionError
from sage_agent.embedded import (
    EMBEDDED_CHAT_MODEL,
    EMBEDDED_EMBEDDING_MODEL,
    EmbeddedModelMissing,
)
from sage_agent.embeddings import default_embeddings
from sage_agent.numeric import MathMetrics, format_number, math_metrics, parse_number
from sage_agent.steps import AtomicStep, MalformedTask, steps_from_gsm8k
from sage_agent.store import AdapterRecord, LoRAStore, StoreConfig
from sage_agent.trigger import Trigger, TriggerConfig, TriggerResult
from sage_agent.verifier import ExpressionError, arithmetic_verifier, evaluate_expression

__all__ = [
    "EMBEDDED_CHAT_MODEL",
    "EMBEDDED_EMBEDDING_MODEL",
    "AdapterRecord",
    "Assignment",
    "AtomicStep",
    "BufferConfig",
    "ChatSage",
    "Cluster",
    "DatabaseError",
    "DatabaseLocked",
    "EmbeddedModelMissing",
    "ExpressionError",
    "LoRAStore",
    "MalformedTask",
    "MathMetrics",
    "RunSummary",
    "SageAgent",
    "SchemaVersionError",
    "StoreConfig",
    "Trigger",
    "TriggerBuffer",
    "TriggerConfig",
    "TriggerResult",
    "UnknownModelError",
    "arithmetic_verifier",
    "default_embeddings",
    "evaluate_expression",
    "format_number",
    "math_metrics",
    "parse_number",
    "steps_from_gsm8k",
]
