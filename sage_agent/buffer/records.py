"""What the buffer hands out: where a sample went, the samples and the clusters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sage_agent.errors import InvalidInput
from sage_agent.records import BufferNote


@dataclass(frozen=True)
class Assignment:
    """Where an added sample went. cluster_id is None unless status is assigned or clustered.

    assigned: joined a cluster by gamma; buffered: waits in its tag's buffer; clustered:
    its add started a stable clustering that put it in a cluster; noise: its add started a
    stable clustering that left it out (it stays in the database, not in the buffer).
    """

    status: Literal["assigned", "buffered", "clustered", "noise"]
    sample_id: int
    tag: str
    cluster_id: int | None = None
    gamma: float | None = None

    def note(self) -> BufferNote:
        """The assignment as the graph's records keep it."""
        return {
            "status": self.status,
            "sample_id": self.sample_id,
            "cluster_id": self.cluster_id,
            "gamma": self.gamma,
        }


@dataclass(frozen=True)
class Sample:
    """A failed sample: its text, structure tag and payload (the step, reference, answer)."""

    id: int
    text: str
    tag: str
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class Cluster:
    """A formal cluster. ``version`` changes whenever its members change."""

    id: int
    tag: str
    size: int
    centroid: np.ndarray
    keywords: frozenset[str]
    version: int
    trained_version: int | None
    trained_size: int | None
    """How many members the cluster had when adapters were last trained on it."""
    samples: list[Sample]


@dataclass(frozen=True)
class FailurePoint:
    """A sample with its embedding and where it ended: for maps of the failures."""

    sample: Sample
    status: str
    """buffered, assigned, clustered, noise or expired."""
    cluster_id: int | None
    """Its formal cluster now (after merges), or None."""
    embedding: np.ndarray


def payload_json(payload: dict[str, Any] | None) -> str | None:
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
    try:
        return json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"payload is not JSON-serialisable: {error}") from error


def sample_of(row: dict[str, Any]) -> Sample:
    payload = json.loads(row["payload"]) if row["payload"] else None
    return Sample(id=row["id"], text=row["text"], tag=row["tag"], payload=payload)
