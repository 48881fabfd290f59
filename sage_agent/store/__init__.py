"""The LoRA Store: Cluster-aware LoRA Optimisation and the adapter pool.

config (settings per concern), recipe (a cluster -> training pairs), search (the CLO
trial loop), gate (canaries), registry (adapters on disk and in SQLite), router (routing
and loading), store (``LoRAStore``, the front over them) and training (the retraining
rule the graph and the LoRA Store tool share).
"""

from sage_agent.store.config import (
    GateConfig,
    RecipeConfig,
    RegistryConfig,
    RouterConfig,
    SearchConfig,
    StoreConfig,
)
from sage_agent.store.gate import CanarySet, affordable_loss
from sage_agent.store.registry import AdapterRecord, AdapterRegistry, TrialRecord, adapter_root
from sage_agent.store.router import Router
from sage_agent.store.store import LoRAStore
from sage_agent.store.training import needs_training, train_cluster

__all__ = [
    "AdapterRecord",
    "AdapterRegistry",
    "CanarySet",
    "GateConfig",
    "LoRAStore",
    "RecipeConfig",
    "RegistryConfig",
    "Router",
    "RouterConfig",
    "SearchConfig",
    "StoreConfig",
    "TrialRecord",
    "adapter_root",
    "affordable_loss",
    "needs_training",
    "train_cluster",
]
