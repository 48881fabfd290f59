"""sage-agent: trigger-guided LoRA self-adaptation (SAGE) for local models in LangChain.

The public names load on first use (PEP 562), so ``import sage_agent`` and the command
line's light commands do not pay for torch, transformers and LangChain up front.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        EngineError,
        ExpressionError,
        InvalidInput,
        MalformedTask,
        NotFoundError,
        RunError,
        SageError,
        SchemaVersionError,
        StoreError,
        UnknownModelError,
        UnsafeCheckpoint,
    )
    from sage_agent.middleware import SageMiddleware
    from sage_agent.records import Attempt, StepRecord, TaskResult, TrainingPair
    from sage_agent.scoring.numeric import MathMetrics, format_number, math_metrics, parse_number
    from sage_agent.scoring.trigger import Trigger, TriggerConfig, TriggerResult
    from sage_agent.scoring.verifier import arithmetic_verifier, evaluate_expression
    from sage_agent.serving import VLLMEngine
    from sage_agent.store import AdaptationPolicy, AdapterRecord, LoRAStore, StoreConfig
    from sage_agent.tasks.data import read_tasks
    from sage_agent.tasks.steps import AtomicStep, steps_from_gsm8k

_ERRORS = (
    "AdapterError ConfigError ContextError CorruptAdapter DatabaseError DatabaseLocked "
    "DataError DecompositionError EmbeddedModelMissing EngineError ExpressionError "
    "InvalidInput MalformedTask NotFoundError RunError SageError SchemaVersionError StoreError "
    "UnknownModelError UnsafeCheckpoint"
)
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(["RunSummary", "SageAgent"], "sage_agent.agent"),
    **dict.fromkeys(
        ["Assignment", "BufferConfig", "Cluster", "TriggerBuffer"], "sage_agent.buffer"
    ),
    "ChatSage": "sage_agent.chat",
    **dict.fromkeys(["AdaptationBudget", "SageContext", "build_context"], "sage_agent.context"),
    **dict.fromkeys(["EMBEDDED_CHAT_MODEL", "EMBEDDED_EMBEDDING_MODEL"], "sage_agent.embedded"),
    "default_embeddings": "sage_agent.embeddings",
    **dict.fromkeys(_ERRORS.split(), "sage_agent.errors"),
    "SageMiddleware": "sage_agent.middleware",
    **dict.fromkeys(["Attempt", "StepRecord", "TaskResult", "TrainingPair"], "sage_agent.records"),
    **dict.fromkeys(
        ["MathMetrics", "format_number", "math_metrics", "parse_number"],
        "sage_agent.scoring.numeric",
    ),
    **dict.fromkeys(["Trigger", "TriggerConfig", "TriggerResult"], "sage_agent.scoring.trigger"),
    **dict.fromkeys(["arithmetic_verifier", "evaluate_expression"], "sage_agent.scoring.verifier"),
    "VLLMEngine": "sage_agent.serving",
    **dict.fromkeys(
        ["AdapterRecord", "AdaptationPolicy", "LoRAStore", "StoreConfig"], "sage_agent.store"
    ),
    "read_tasks": "sage_agent.tasks.data",
    **dict.fromkeys(["AtomicStep", "steps_from_gsm8k"], "sage_agent.tasks.steps"),
}
__all__ = sorted(_PUBLIC)


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's PEP 562 ``__getattr__`` and ``__dir__``: each name of ``exports``
    (name -> the module that defines it) is imported on first use, then kept."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


# Modules that moved into the subpackages keep their old import paths (the ones the docs
# of earlier releases show), as aliases of the same module objects.
MOVED_MODULES = {
    **{f"sage_agent.{m}": f"sage_agent.tasks.{m}" for m in ("data", "problems", "steps")},
    **{f"sage_agent.{m}": f"sage_agent.tasks.{m}" for m in ("decompose", "plans")},
    **{f"sage_agent.{m}": f"sage_agent.scoring.{m}" for m in ("trigger", "verifier", "numeric")},
    **{f"sage_agent.{m}": f"sage_agent.training.{m}" for m in ("trainer", "validation")},
    "sage_agent.augment": "sage_agent.training.augment",
    "sage_agent.answer_batches": "sage_agent.training.batches",
    "sage_agent.answer_formats": "sage_agent.training.formats",
    **{f"sage_agent.{m}": f"sage_agent.app.{m}" for m in ("cli", "demo", "progress")},
    "sage_agent.studio": "sage_agent.graphs.studio",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module it moved to."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module: Any) -> None:
        """The module it moved to has run already."""


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
