"""When a cluster is trained, and training it: the one place of the retraining rule.

The graph asks ``needs_training`` after each failure it buffers and, when it says yes,
calls the LoRA Store tool, which calls ``train_cluster``.
"""

from __future__ import annotations

from sage_agent.buffer import Cluster, TriggerBuffer
from sage_agent.database import Heartbeat, this_owner
from sage_agent.errors import StoreError
from sage_agent.store.registry import AdapterRecord
from sage_agent.store.search import Emit
from sage_agent.store.store import LoRAStore

CLAIM_SECONDS = 120.0
"""How long a cluster's claim lasts without a heartbeat (for an owner on another machine;
one on this machine holds it while it lives)."""
CLAIM_BEAT = 30.0
"""Seconds between the heartbeats that renew a claim while its cluster trains."""


def needs_training(cluster: Cluster, store: LoRAStore) -> bool:
    """A cluster is trained once it has ``min_train_samples`` members, and again once it
    has grown ``retrain_growth`` times past the size it was last trained at."""
    if cluster.size < store.config.min_train_samples:
        return False
    if cluster.trained_version is None:
        return True
    trained = cluster.trained_size or cluster.size
    return cluster.version != cluster.trained_version and (
        cluster.size >= store.config.retrain_growth * trained
    )


def train_cluster(
    store: LoRAStore,
    buffer: TriggerBuffer,
    cluster_id: int,
    *,
    max_seconds: float | None = None,
    progress: Emit | None = None,
) -> tuple[Cluster, list[AdapterRecord]]:
    """Run the store's search on a cluster that ``needs_training`` and mark it trained
    (even when no adapter was kept: the same members are not searched again). Returns the
    cluster as trained and its adapters, best first.

    The cluster is claimed first, so two processes never train it at once (the second
    gets a StoreError). A search of these very members that finished before its process
    was killed is not run again: its logged trials and kept adapters stand, and the
    cluster is only marked trained.
    """
    cluster = buffer.cluster(cluster_id)
    if not needs_training(cluster, store):
        raise StoreError(
            f"cluster {cluster.id} does not need training: it has {cluster.size} members "
            f"(training needs {store.config.min_train_samples}, and a trained cluster "
            f"{store.config.retrain_growth:g} times the members it was trained on)"
        )
    if any(t.cluster_version == cluster.version for t in store.registry.trials(cluster.id)):
        buffer.mark_trained(cluster.id, cluster.version, cluster.size)
        return cluster, store.adapters(cluster.id)
    owner = this_owner()
    if not buffer.claim(cluster.id, owner, CLAIM_SECONDS):
        raise StoreError(f"cluster {cluster.id} is being trained by another process or thread")
    try:
        with Heartbeat(lambda: buffer.renew(cluster.id, owner, CLAIM_SECONDS), CLAIM_BEAT):
            kept = store.optimize(
                cluster,
                max_seconds=max_seconds,
                progress=progress,
                tag_failures=buffer.base_failures(cluster.tag),
            )
    except BaseException:
        buffer.release(cluster.id, owner)
        raise
    buffer.mark_trained(cluster.id, cluster.version, cluster.size)
    return cluster, kept
