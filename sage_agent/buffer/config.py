"""Settings of Streaming Buffer Clustering; the defaults are the paper's."""

from __future__ import annotations

from dataclasses import dataclass, field

from sage_agent.database import LOCK_TIMEOUT
from sage_agent.errors import ConfigError


@dataclass
class BufferConfig:
    """Thresholds of Streaming Buffer Clustering; defaults are the paper's."""

    tau: float = field(default=0.75, metadata={"help": "A sample joins a cluster at gamma >= tau."})
    cosine_weight: float = field(default=0.7, metadata={"help": "Weight of cosine in gamma."})
    keyword_weight: float = field(
        default=0.3, metadata={"help": "Weight of keyword Jaccard in gamma."}
    )
    buffer_size: int = field(
        default=25, metadata={"help": "T: buffered samples of a tag that start a clustering."}
    )
    recluster_every: int = field(
        default=5,
        metadata={"help": "After an unstable clustering, new samples before the next try."},
    )
    max_buffer: int = field(
        default=200,
        metadata={
            "help": "A tag's buffer never holds more; past it the oldest samples leave it "
            "(status 'expired'), so a tag that never clusters stably costs bounded time."
        },
    )
    min_cluster_size: int = field(default=5, metadata={"help": "HDBSCAN min_cluster_size."})
    min_samples: int = field(
        default=1,
        metadata={
            "help": "HDBSCAN min_samples: lower leaves fewer samples as noise (HDBSCAN's "
            "own default is min_cluster_size)."
        },
    )
    ari_threshold: float = field(
        default=0.8,
        metadata={
            "help": "Stable needs ARI against the reference >= this, over the samples both "
            "place in a cluster (at least min_cluster_size of them)."
        },
    )
    centroid_threshold: float = field(
        default=0.5,
        metadata={"help": "Stable needs mean matched-centroid cosine >= this."},
    )
    merge_threshold: float = field(
        default=0.8, metadata={"help": "delta: clusters of a tag merge at centroid cosine >= this."}
    )
    merge_min_clusters: int = field(
        default=3, metadata={"help": "Merging starts when a tag has this many clusters."}
    )
    subsample_fraction: float = field(
        default=0.8,
        metadata={
            "help": "A clustering with no earlier one of the same samples is checked against "
            "a clustering of this seeded fraction of them."
        },
    )
    min_shared: int = field(
        default=5,
        metadata={"help": "Shared samples needed to compare with the previous clustering."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subsample check."})
    lock_timeout: float = field(
        default=LOCK_TIMEOUT,
        metadata={"help": "Seconds to wait for another process's database lock."},
    )

    def __post_init__(self) -> None:
        for name in ("tau", "ari_threshold", "centroid_threshold", "merge_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [-1, 1], not {getattr(self, name)}")
        if self.min_samples < 1:
            raise ConfigError(f"min_samples must be at least 1, not {self.min_samples}")
        if self.min_cluster_size < 2:
            raise ConfigError(f"min_cluster_size must be at least 2, not {self.min_cluster_size}")
        if self.buffer_size < self.min_cluster_size:
            raise ConfigError(
                f"buffer_size ({self.buffer_size}) must be at least min_cluster_size "
                f"({self.min_cluster_size})"
            )
        if self.max_buffer < self.buffer_size:
            raise ConfigError(
                f"max_buffer ({self.max_buffer}) must be at least buffer_size ({self.buffer_size})"
            )
        if self.recluster_every < 1:
            raise ConfigError(f"recluster_every must be at least 1, not {self.recluster_every}")
        if not 0.0 < self.subsample_fraction < 1.0:
            raise ConfigError(
                f"subsample_fraction must lie in (0, 1), not {self.subsample_fraction}"
            )
        if int(self.buffer_size * self.subsample_fraction) < self.min_cluster_size:
            # A subsample smaller than a cluster is all noise: no first clustering
            # could ever be checked stable.
            raise ConfigError(
                f"buffer_size ({self.buffer_size}) times subsample_fraction "
                f"({self.subsample_fraction}) must be at least min_cluster_size "
                f"({self.min_cluster_size})"
            )
