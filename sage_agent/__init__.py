"""sage-agent: trigger-guided LoRA self-adaptation (SAGE) for local models in LangChain."""

from sage_agent.agent import RunSummary, SageAgent
from sage_agent.buffer import Assignment, BufferConfig, Cluster, TriggerBuffer
from sage_agent.chat import ChatSage
from sage_agent.context import AdaptationBudget, SageContext, build_context
from sage_agent.embedded import EMBEDDED_CHAT_MODEL, EMBEDDED_EMBEDDING_MODEL
from sage_agent.embeddings import default_embeddings
from sage_agent.errors import (
    AdapterError,
    ConfigError,
    ContextError,
    CorruptAdapter,
    DatabaseError,
    DatabaseLocked,
    DataError,
    DecompositionError,
    EmbeddedModelMissing,
    ExpressionError,
    InvalidInput,
    MalformedTask,
    NotFoundError,
    RunError,
    SageError,
    SchemaVersionError,
    StoreError,
    UnknownModelError,
)
from sage_agent.middleware import SageMiddleware
from sage_agent.numeric import MathMetrics, format_number, math_metrics, parse_number
from sage_agent.records import Attempt, StepRecord, TaskResult, TrainingPair
from sage_agent.steps import AtomicStep, steps_from_gsm8k
from sage_agent.store import AdapterRecord, LoRAStore, StoreConfig
from sage_agent.trigger import Trigger, TriggerConfig, TriggerResult
from sage_agent.verifier import arithmetic_verifier, evaluate_expression

__all__ = [
    "EMBEDDED_CHAT_MODEL",
    "EMBEDDED_EMBEDDING_MODEL",
    "AdaptationBudget",
    "AdapterError",
    "AdapterRecord",
    "Assignment",
    "AtomicStep",
    "Attempt",
    "BufferConfig",
    "ChatSage",
    "Cluster",
    "ConfigError",
    "ContextError",
    "CorruptAdapter",
    "DataError",
    "DatabaseError",
    "DatabaseLocked",
    "DecompositionError",
    "EmbeddedModelMissing",
    "ExpressionError",
    "InvalidInput",
    "LoRAStore",
    "MalformedTask",
    "MathMetrics",
    "NotFoundError",
    "RunError",
    "RunSummary",
    "SageAgent",
    "SageContext",
    "SageError",
    "SageMiddleware",
    "SchemaVersionError",
    "StepRecord",
    "StoreConfig",
    "StoreError",
    "TaskResult",
    "TrainingPair",
    "Trigger",
    "TriggerBuffer",
    "TriggerConfig",
    "TriggerResult",
    "UnknownModelError",
    "arithmetic_verifier",
    "build_context",
    "default_embeddings",
    "evaluate_expression",
    "format_number",
    "math_metrics",
    "parse_number",
    "steps_from_gsm8k",
]
