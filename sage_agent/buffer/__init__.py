"""The Trigger Buffer: Streaming Buffer Clustering of failed samples (paper Algorithm 1).

config (thresholds), records (samples, clusters, assignments), tags (structure tags and
keywords), clustering (HDBSCAN and the stability check, pure functions), schema (its
tables), points (samples with their embeddings), claims (who trains a cluster) and buffer
(``TriggerBuffer``).
"""

from typing import TYPE_CHECKING

from sage_agent import lazy_exports

if TYPE_CHECKING:
    from sage_agent.buffer.buffer import TriggerBuffer
    from sage_agent.buffer.config import BufferConfig
    from sage_agent.buffer.records import Assignment, Cluster, FailurePoint, Sample
    from sage_agent.buffer.tags import Tagger, default_tag, first_expression, keywords

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["TriggerBuffer"], "sage_agent.buffer.buffer"),
    **dict.fromkeys(["BufferConfig"], "sage_agent.buffer.config"),
    **dict.fromkeys(
        ["Assignment", "Cluster", "FailurePoint", "Sample"], "sage_agent.buffer.records"
    ),
    **dict.fromkeys(
        ["Tagger", "default_tag", "first_expression", "keywords"], "sage_agent.buffer.tags"
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
