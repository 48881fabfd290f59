"""What the SAGE graph runs with: ``SageContext`` (LangGraph's ``context_schema``), how
one is built for a database, and how a node reads it from its runtime.

The graph's state holds only serialisable records; the model, the Trigger, the buffer,
the store and the decomposer come through the context. The graph module and the LoRA
Store tool both read the context with ``context_of``, so neither imports the other.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from langchain_core.embeddings import Embeddings
from langgraph.config import get_config

from sage_agent.buffer import BufferConfig, TriggerBuffer
from sage_agent.chat import ChatSage
from sage_agent.embeddings import LazyDefaultEmbeddings
from sage_agent.errors import ConfigError, ContextError
from sage_agent.scoring.trigger import Trigger
from sage_agent.scoring.verifier import arithmetic_verifier
from sage_agent.store import AdaptationPolicy, LoRAStore, StoreConfig, adapter_root
from sage_agent.tasks.decompose import Decomposer, LLMDecomposer, socratic_decomposer
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT

if TYPE_CHECKING:
    from sage_agent.serving import VLLMEngine

MIN_SEARCH_SECONDS = 60.0
"""A run with less adaptation time left than this starts no search: the base model's
validation and one first rung take about this long on the embedded model."""


PLANNER_SHARE = 1 / 3
"""With a planner, the share of a run's adaptation budget that only the plan cluster's
searches may spend: a task's plan fails once where its steps fail several times, so the
step clusters are ready first and would spend the whole budget before the plan cluster is."""


@dataclass
class AdaptationBudget:
    """The seconds one run may spend in the LoRA Store, over all its searches (the CLI's
    ``--adapt-seconds``). A search starts only with ``MIN_SEARCH_SECONDS`` left and is given
    at most what is left; a search that starts finishes, so the run can pass its budget by
    one search's confirmation and saving (tens of seconds). When the graph plans with a
    planner (``SageContext.planner``), the step clusters' searches leave the plan cluster's
    share unspent (``PLANNER_SHARE``)."""

    seconds: float
    spent: float = 0.0
    planner_spent: float = 0.0
    """Of ``spent``, what the plan cluster's searches spent."""
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    """Threads of one run (``concurrency``) charge it at once."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"an adaptation budget must be positive seconds, not {self.seconds}")

    @property
    def left(self) -> float:
        return max(0.0, self.seconds - self.spent)

    @property
    def kept_for_planner(self) -> float:
        """What is left of the plan cluster's share."""
        return max(0.0, self.seconds * PLANNER_SHARE - self.planner_spent)

    def search_seconds(self, wanted: float, *, keep: float = 0.0) -> float | None:
        """The budget of the next search, which wants ``wanted`` seconds: at most what is
        left but ``keep`` (seconds kept for other searches), None when too little is left
        to start one."""
        left = max(0.0, self.left - keep)
        return None if left < MIN_SEARCH_SECONDS else min(wanted, left)

    def charge(self, seconds: float, *, planner: bool = False) -> None:
        """Count a store call's wall ``seconds`` (``planner``: the plan cluster's)."""
        with self._lock:
            self.spent += seconds
            if planner:
                self.planner_spent += seconds


@dataclass
class SageContext:
    """What the graph runs with (LangGraph ``context_schema``); never part of the state."""

    model: ChatSage
    """The base model: it trains the adapters, and answers unless ``engine`` does."""
    trigger: Trigger
    buffer: TriggerBuffer | None = None
    """Where failures are clustered; None: failures are only recorded."""
    store: LoRAStore | None = None
    """Routes steps to adapters and trains new ones; None: the base model only."""
    decomposer: Decomposer = socratic_decomposer
    substitute: Literal["answers", "references"] = "references"
    """answers: later steps use the model's own earlier answers (a real agent);
    references: they use the reference values, so each step is scored on its own."""
    train: bool = True
    """Train adapters when a failure's cluster is ready (False: route and answer only)."""
    route: bool = True
    """Route steps to existing adapters (False: always the base model)."""
    max_retries: int = 3
    """Adapters tried on a failed step after training (of the store's ``keep`` kept)."""
    budget_seconds: float | None = None
    """Time budget of one LoRA search; None: the store's own."""
    adaptation: AdaptationBudget | None = None
    """The run's time for all its searches (charged by the store calls); None: no limit
    beyond each search's own budget."""
    prompt: str = ATOMIC_PROMPT
    max_tokens: int = ANSWER_MAX_TOKENS
    """Answer length limit (an atomic step's answer is a number, often after its equation)."""
    engine: VLLMEngine | None = None
    """A vLLM server that answers the steps, with the store's adapters registered with
    it; None: ``model`` answers in this process."""

    @property
    def answerer(self) -> ChatSage | VLLMEngine:
        """What answers a step: ``answerer.invoke(prompt, adapter=name, max_tokens=n)``."""
        return self.engine if self.engine is not None else self.model

    @property
    def policy(self) -> AdaptationPolicy:
        """The adaptation policy over the store, routing and learning as this context
        says (``route``, ``train``)."""
        return AdaptationPolicy(self.store, route=self.route, learn=self.train)

    @property
    def planner(self) -> LLMDecomposer | None:
        """The decomposer, when it is a planner that adapters of the graph's model can
        help (an ``LLMDecomposer`` on ``model``)."""
        planner = self.decomposer
        if isinstance(planner, LLMDecomposer) and planner.model is self.model:
            return planner
        return None


def build_context(
    db: str | Path,
    model: ChatSage | str | None = None,
    *,
    embeddings: Embeddings | None = None,
    trigger: Trigger | None = None,
    buffer_config: BufferConfig | None = None,
    store_config: StoreConfig | None = None,
    adapters: str | Path | None = None,
    decomposer: Decomposer = socratic_decomposer,
    substitute: Literal["answers", "references"] = "references",
    engine: str | VLLMEngine | None = None,
) -> SageContext:
    """The components of a SAGE run on the SQLite file ``db``: ``model`` (a ChatSage, a
    model id or path; default the embedded SmolLM2-135M), the Trigger with the arithmetic
    verifier, the buffer and the LoRA Store (adapters in ``adapters``, default
    ``adapter_root(db)``), sharing one lazily loaded embedder. ``engine`` (a vLLM
    server's URL or a VLLMEngine) answers instead of ``model``, which then loads its
    weights only to train."""
    if not isinstance(model, ChatSage):
        model = ChatSage(model=model) if model else ChatSage()
    if isinstance(engine, str):
        from sage_agent.serving import VLLMEngine

        engine = VLLMEngine(engine)
    embeddings = embeddings or LazyDefaultEmbeddings()
    root = adapters or adapter_root(db)
    return SageContext(
        model=model,
        trigger=trigger or Trigger(embeddings=embeddings, verifier=arithmetic_verifier),
        buffer=TriggerBuffer(db, buffer_config, embeddings=embeddings),
        store=LoRAStore(db, root, model, store_config, embeddings, engine=engine),
        decomposer=decomposer,
        substitute=substitute,
        engine=engine,
    )


@runtime_checkable
class ContextSource(Protocol):
    """A context given as data (Studio, the HTTP API) that knows how to become a
    SageContext; see ``sage_agent.graphs.studio.StudioContext``."""

    def resolve(self) -> SageContext: ...


def context_of(runtime: Any) -> SageContext:
    """The SageContext of a node's (or a tool's) LangGraph runtime. A ``ContextSource``
    is resolved; anything else is a ContextError that says what to pass."""
    context = getattr(runtime, "context", None)
    if isinstance(context, SageContext):
        return context
    if isinstance(context, ContextSource):
        return context.resolve()
    given = "no context" if context is None else f"a {type(context).__name__}"
    raise ContextError(
        f"the SAGE graph needs a SageContext and got {given}: call it with "
        "context=SageAgent(...).context() or context=build_context(db), or serve "
        "graphs/studio.py with langgraph dev"
    )


def current_thread_id() -> str | None:
    """The thread of the LangGraph run under way (None without a checkpointer's thread)."""
    return (get_config().get("configurable") or {}).get("thread_id")
