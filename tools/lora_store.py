"""LangChain tools over the LoRA Store: train adapters for a cluster, route a text."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from langchain_core.tools import BaseTool, InjectedToolArg, ToolException
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from sage_agent.buffer import TriggerBuffer
from sage_agent.context import context_of
from sage_agent.errors import SageError
from sage_agent.store import LoRAStore, train_cluster


class LoRAStoreArgs(BaseModel):
    cluster_id: int = Field(description="Id of the failure cluster to train adapters for.")
    budget_seconds: float | None = Field(
        default=None, gt=0, description="Time budget of the search; the store's default if unset."
    )
    # Filled by LangGraph's ToolNode (a ToolRuntime); hidden from the model's schema.
    runtime: Annotated[Any, InjectedToolArg, SkipJsonSchema()] = None


class LoRAStoreTool(BaseTool):
    """Trains a cluster of the Trigger Buffer (``sage_agent.store.train_cluster``: the
    CLO search, then the cluster is marked trained). Returns a short summary; the adapter
    records are the tool message's artifact. Failures (a cluster that does not need
    training, a used-up budget, out of memory) become an error ToolMessage.

    Without ``store`` and ``buffer`` the tool takes them from the LangGraph runtime
    context (``context.store`` and ``context.buffer``) of the ToolNode that calls it, and
    streams the store's progress events through the graph's stream writer.
    """

    name: str = "lora_store"
    description: str = (
        "Train LoRA adapters for a cluster of failed steps and keep the best of them. "
        "Input: the cluster id and an optional time budget in seconds."
    )
    args_schema: type[BaseModel] = LoRAStoreArgs
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool = True
    handle_validation_error: bool = True
    store: LoRAStore | None = None
    buffer: TriggerBuffer | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _run(
        self,
        cluster_id: int,
        budget_seconds: float | None = None,
        runtime: Any = None,
        **_: Any,
    ) -> tuple[str, list[dict[str, Any]]]:
        context = None
        if runtime is not None and (self.store is None or self.buffer is None):
            context = context_of(runtime)
        store = self.store or getattr(context, "store", None)
        buffer = self.buffer or getattr(context, "buffer", None)
        if store is None or buffer is None:
            raise ToolException("lora_store has no LoRA Store or Trigger Buffer to work with")
        progress = getattr(runtime, "stream_writer", None)
        try:
            cluster, kept = train_cluster(
                store, buffer, cluster_id, max_seconds=budget_seconds, progress=progress
            )
        except (SageError, MemoryError, OSError) as error:  # OSError: a full disk, say
            raise ToolException(f"lora_store failed for cluster {cluster_id}: {error}") from error
        failed = [
            t
            for t in store.registry.trials(cluster.id)
            if t.cluster_version == cluster.version and t.outcome.startswith("failed")
        ]
        note = f" {len(failed)} trials failed: {failed[0].outcome}." if failed else ""
        if not kept:
            return (
                f"No adapter for cluster {cluster.id} (tag {cluster.tag!r}) beat the base "
                f"model and passed the regression gate.{note}",
                [],
            )
        best = kept[0]
        summary = (
            f"Kept {len(kept)} adapters for cluster {cluster.id} (tag {cluster.tag!r}, "
            f"{cluster.size} samples): best {best.id} with validation EM {best.val_em:.2f} "
            f"(base {best.base_val_em:.2f}).{note}"
        )
        return summary, [asdict(record) for record in kept]


class RouteAdapterArgs(BaseModel):
    text: str = Field(description="The step to answer.")
    tag: str | None = Field(default=None, description="Its structure tag, if known.")


class RouteAdapterTool(BaseTool):
    """The adapters routed to a text (nearest cluster centroid above the threshold), and
    how the adaptation policy would use them."""

    name: str = "route_adapter"
    description: str = "Find the LoRA adapters trained on failures like this step, best first."
    args_schema: type[BaseModel] = RouteAdapterArgs
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_validation_error: bool = True
    store: LoRAStore

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _run(self, text: str, tag: str | None = None, **_: Any) -> tuple[str, list[dict[str, Any]]]:
        policy = self.store.policy
        route = policy.route(text, tag=tag)
        if route.adapter is None:
            return "No adapter is close enough; answer with the base model.", []
        routed = [self.store.get(adapter_id) for adapter_id in route.adapters]
        how = "answer with the best adapter"
        if policy.base_first(route):
            when = (
                ""
                if route.route_all
                else " if the base model is unsure (the log-probability of its number)"
            )
            how = f"answer with the base model first, then with the best adapter{when}"
            if policy.contested:
                how += ", keeping the adapter's answer only where the model is surer of it"
        return (
            f"{len(routed)} adapters of cluster {routed[0].cluster_id}: "
            + ", ".join(f"{r.id} (EM {r.val_em:.2f})" for r in routed)
            + f"; {how}.",
            [asdict(record) for record in routed],
        )
