"""The LoRA Store: Cluster-aware LoRA Optimisation and the adapter pool.

config (settings per concern), policy (when a routed adapter answers, what an
answer teaches), recipe (a cluster -> training pairs), search (the CLO
trial loop), gate (canaries), registry (adapters on disk and in SQLite), router (routing
and loading), store (``LoRAStore``, the front over them) and training (the retraining
rule the graph and the LoRA Store tool share).
"""

from typing import TYPE_CHECKING

from sage_agent import lazy_exports

if TYPE_CHECKING:
    from sage_agent.database import adapter_root
    from sage_agent.store.config import (
        GateConfig,
        RecipeConfig,
        RegistryConfig,
        RouterConfig,
        SearchConfig,
        StoreConfig,
    )
    from sage_agent.store.gate import CanarySet, affordable_loss
    from sage_agent.store.policy import AdaptationPolicy, Observed, Route
    from sage_agent.store.registry import AdapterRecord, AdapterRegistry, TrialRecord
    from sage_agent.store.router import Router
    from sage_agent.store.store import LoRAStore
    from sage_agent.store.training import needs_training, train_cluster

_EXPORTS: dict[str, str] = {
    "adapter_root": "sage_agent.database",
    **dict.fromkeys(
        [
            "GateConfig",
            "RecipeConfig",
            "RegistryConfig",
            "RouterConfig",
            "SearchConfig",
            "StoreConfig",
        ],
        "sage_agent.store.config",
    ),
    **dict.fromkeys(["CanarySet", "affordable_loss"], "sage_agent.store.gate"),
    **dict.fromkeys(["AdaptationPolicy", "Observed", "Route"], "sage_agent.store.policy"),
    **dict.fromkeys(
        ["AdapterRecord", "AdapterRegistry", "TrialRecord"],
        "sage_agent.store.registry",
    ),
    **dict.fromkeys(["Router"], "sage_agent.store.router"),
    **dict.fromkeys(["LoRAStore"], "sage_agent.store.store"),
    **dict.fromkeys(["needs_training", "train_cluster"], "sage_agent.store.training"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
