"""The Trigger Buffer: Streaming Buffer Clustering of failed samples (paper Algorithm 1).

config (thresholds), tags (structure tags and keywords), clustering (HDBSCAN and the
stability check, pure functions), schema (its tables) and buffer (``TriggerBuffer``).
"""

from sage_agent.buffer.buffer import TriggerBuffer
from sage_agent.buffer.config import BufferConfig
from sage_agent.buffer.records import Assignment, Cluster, FailurePoint, Sample
from sage_agent.buffer.tags import Tagger, default_tag, first_expression, keywords

__all__ = [
    "Assignment",
    "BufferConfig",
    "Cluster",
    "FailurePoint",
    "Sample",
    "Tagger",
    "TriggerBuffer",
    "default_tag",
    "first_expression",
    "keywords",
]
