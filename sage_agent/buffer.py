"""TriggerBuffer: Streaming Buffer Clustering of failed samples (paper Algorithm 1).

Each failed sample gets a structure tag, an embedding and a keyword set. In a tag that is
already stable, the sample joins the best cluster when gamma = 0.7 cosine + 0.3 keyword
Jaccard reaches tau. Otherwise it waits in the tag's buffer; at T buffered samples the
buffer is clustered with HDBSCAN and the clustering is kept only if it is stable
(adjusted Rand index and matched-centroid cosine against a reference clustering). Stable
clusters become formal clusters, and a tag with three or more clusters merges those whose
centroids are close. All state lives in the project's SQLite file.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import hdbscan
import numpy as np
import sqlite_utils
from langchain_core.embeddings import Embeddings
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from sage_agent.database import open_database, transaction
from sage_agent.embeddings import LazyEmbeddings
from sage_agent.steps import operator_signature

Tagger = Callable[[str, dict[str, Any] | None], str]
"""Maps a sample's text and payload to its structure tag."""


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
            "help": "HDBSCAN min_samples. On buffers of 25 atomic-step prompts, 1 leaves about "
            "40% as noise where HDBSCAN's default (min_cluster_size) leaves about 80%."
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
        default=10.0, metadata={"help": "Seconds to wait for another process's database lock."}
    )

    def __post_init__(self) -> None:
        for name in ("tau", "ari_threshold", "centroid_threshold", "merge_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [-1, 1], not {getattr(self, name)}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, not {self.min_samples}")
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be at least 2, not {self.min_cluster_size}")
        if self.buffer_size < self.min_cluster_size:
            raise ValueError(
                f"buffer_size ({self.buffer_size}) must be at least min_cluster_size "
                f"({self.min_cluster_size})"
            )
        if self.max_buffer < self.buffer_size:
            raise ValueError(
                f"max_buffer ({self.max_buffer}) must be at least buffer_size ({self.buffer_size})"
            )
        if self.recluster_every < 1:
            raise ValueError(f"recluster_every must be at least 1, not {self.recluster_every}")
        if not 0.0 < self.subsample_fraction < 1.0:
            raise ValueError(
                f"subsample_fraction must lie in (0, 1), not {self.subsample_fraction}"
            )
        if int(self.buffer_size * self.subsample_fraction) < self.min_cluster_size:
            # A subsample smaller than a cluster is all noise: no first clustering
            # could ever be checked stable.
            raise ValueError(
                f"buffer_size ({self.buffer_size}) times subsample_fraction "
                f"({self.subsample_fraction}) must be at least min_cluster_size "
                f"({self.min_cluster_size})"
            )


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


# tags and keywords

_EXPRESSION = re.compile(r"\(?\$?\d[\d.,]*\)?(?:\s*(?:\*\*|[-+*/%×÷−])\s*\(?\$?\d[\d.,]*\)?)+")


def default_tag(text: str, payload: dict[str, Any] | None = None) -> str:
    """The operator signature of the step's expression (``payload["expression"]``, else the
    first arithmetic expression in the text), or "default" when there is none."""
    expression = (payload or {}).get("expression")
    if not isinstance(expression, str) or not expression.strip():
        match = _EXPRESSION.search(text)
        expression = match.group(0) if match else ""
    return operator_signature(expression) or "default"


_TOKEN = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*|\*\*|[-+*/%×÷−]")
_STOPWORDS = frozenset(
    (  # noqa: SIM905 - a word list reads best as one string
        "a an and are as at be by did do does for from had has have he her his how in is it "
        "its many much of on or reply she so than that the their them then there they this to "
        "was what when which who will with only number"
    ).split()
)


def keywords(text: str) -> frozenset[str]:
    """Content words (lowercase, no stop words), operators, and "<num>" for any number, so
    "3 apples" and "7 apples" share all their keywords."""
    found = set()
    for token in _TOKEN.findall(text.lower()):
        if token[0].isdigit():
            found.add("<num>")
        elif token.isalpha():
            if len(token) > 1 and token not in _STOPWORDS:
                found.add(token)
        else:
            found.add(operator_signature(f"1{token}1"))
    return frozenset(found)


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32).astype(np.float64)


def _cluster_keywords(counts: dict[str, int], size: int) -> frozenset[str]:
    """A cluster's keywords: those held by at least half of its members."""
    return frozenset(k for k, n in counts.items() if 2 * n >= size)


# the buffer


class TriggerBuffer(LazyEmbeddings):
    """Streaming Buffer Clustering over a SQLite file (see the module docstring).

    ``db`` is the path of the project's SQLite file. A new TriggerBuffer on the same file
    continues exactly where the last one stopped. Each add is one transaction: a crash
    loses at most the add in flight.

    Stability of a clustering: when the previous clustering of this tag was unstable and
    shares at least ``min_shared`` samples with this one (it clustered the same buffer,
    before the newest samples came), the check compares against it: ARI over the shared
    samples and the mean cosine of optimally matched centroids. The very first clustering
    of a buffer has no such predecessor; it is compared, the same way, with an HDBSCAN
    clustering of a seeded ``subsample_fraction`` of the same samples. A clustering with
    no cluster at all (only noise) is never stable.

    A stable clustering empties the buffer: clustered samples join their clusters, and
    the ones HDBSCAN left as noise leave the buffer with status "noise". An unstable one
    leaves the buffer as it was, up to ``max_buffer`` samples.
    """

    def __init__(
        self,
        db: str | Path,
        config: BufferConfig | None = None,
        embeddings: Embeddings | None = None,
        tagger: Tagger = default_tag,
    ) -> None:
        self.config = config or BufferConfig()
        self.path = Path(db)
        self.db: sqlite_utils.Database = open_database(db, timeout=self.config.lock_timeout)
        self.tagger = tagger
        self._embeddings = embeddings
        self._ensure_tables()

    # public API

    def add(
        self, text: str, *, tag: str | None = None, payload: dict[str, Any] | None = None
    ) -> Assignment:
        """Add one failed sample; see the class docstring."""
        return self.add_many([text], tags=[tag], payloads=[payload])[0]

    def add_many(
        self,
        texts: Sequence[str],
        *,
        tags: Sequence[str | None] | None = None,
        payloads: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[Assignment]:
        """Add samples in order with one embedding call; each add is its own transaction."""
        tags = list(tags) if tags is not None else [None] * len(texts)
        payloads = list(payloads) if payloads is not None else [None] * len(texts)
        if not len(texts) == len(tags) == len(payloads):
            raise ValueError("texts, tags and payloads must have the same length")
        encoded = [_payload_json(p) for p in payloads]
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"sample text must be a non-empty string, not {text!r}")
        vectors = np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float64)
        for text, vector in zip(texts, vectors, strict=True):
            if not np.any(vector) or not np.all(np.isfinite(vector)):
                raise ValueError(f"sample {text[:60]!r} embeds to a zero or non-finite vector")
        results = []
        for text, tag, payload, payload_json, vector in zip(
            texts, tags, payloads, encoded, vectors, strict=True
        ):
            tag = tag or self.tagger(text, payload)
            with transaction(self.db):
                results.append(self._add_one(text, tag, payload_json, _unit(vector)))
        return results

    def clusters(self, tag: str | None = None, *, with_samples: bool = True) -> list[Cluster]:
        """Formal clusters (of one tag, or all), oldest first."""
        where, args = "merged_into IS NULL", []
        if tag is not None:
            where, args = where + " AND tag = ?", [tag]
        return [
            self._cluster(row, with_samples)
            for row in self.db["clusters"].rows_where(where, args, order_by="id")
        ]

    def cluster(self, cluster_id: int) -> Cluster:
        """One formal cluster by id (a merged cluster's id leads to the one it joined)."""
        row = self._cluster_row(cluster_id)
        while row["merged_into"] is not None:
            row = self._cluster_row(row["merged_into"])
        return self._cluster(row, with_samples=True)

    def ready(self, min_size: int) -> list[Cluster]:
        """Clusters with at least ``min_size`` samples and no adapter trained on their
        current members."""
        rows = self.db["clusters"].rows_where(
            "merged_into IS NULL AND size >= ? AND "
            "(trained_version IS NULL OR trained_version < version)",
            [min_size],
            order_by="id",
        )
        return [self._cluster(row, with_samples=True) for row in rows]

    def mark_trained(self, cluster_id: int, version: int, size: int | None = None) -> None:
        """Record that adapters were trained on ``version`` of the cluster's members
        (``size`` of them), so a caller can retrain once the cluster has grown."""
        with transaction(self.db):
            self._cluster_row(cluster_id)
            self.db["clusters"].update(
                cluster_id, {"trained_version": version, "trained_size": size}
            )

    def buffered(self, tag: str | None = None) -> list[Sample]:
        """Samples waiting in the buffer (of one tag, or all), oldest first."""
        where, args = "status = 'buffered'", []
        if tag is not None:
            where, args = where + " AND tag = ?", [tag]
        return [_sample(r) for r in self.db["samples"].rows_where(where, args, order_by="id")]

    def stable_tags(self) -> list[str]:
        return [r["tag"] for r in self.db["tags"].rows_where("stable = 1", order_by="tag")]

    def clusterings(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Every clustering attempt with its check: for traces and benchmarks."""
        where, args = ("tag = ?", [tag]) if tag is not None else (None, [])
        return list(self.db["clusterings"].rows_where(where, args, order_by="id"))

    def close(self) -> None:
        self.db.close()

    # one add, inside a transaction

    def _add_one(
        self, text: str, tag: str, payload_json: str | None, vector: np.ndarray
    ) -> Assignment:
        kws = keywords(text)
        sample_id = (
            self.db["samples"]
            .insert(
                {
                    "text": text,
                    "tag": tag,
                    "payload": payload_json,
                    "embedding": _blob(vector),
                    "keywords": json.dumps(sorted(kws)),
                    "status": "buffered",
                    "created": time.time(),
                }
            )
            .last_pk
        )
        state = self._tag_state(tag)
        if state["stable"]:
            best = self._best_cluster(tag, vector, kws)
            if best is not None and best[1] >= self.config.tau:
                self._join(best[0], [(sample_id, vector, kws)], via="gamma")
                return Assignment("assigned", sample_id, tag, best[0], best[1])

        pending = state["pending"] + 1
        self.db["tags"].update(tag, {"pending": pending})
        waiting = self.db.execute(
            "SELECT COUNT(*) FROM samples WHERE tag = ? AND status = 'buffered'", [tag]
        ).fetchone()[0]
        if waiting > self.config.max_buffer:
            self.db.execute(
                "UPDATE samples SET status = 'expired' WHERE id IN (SELECT id FROM samples "
                "WHERE tag = ? AND status = 'buffered' ORDER BY id LIMIT ?)",
                [tag, waiting - self.config.max_buffer],
            )
        if waiting >= self.config.buffer_size and pending >= self.config.recluster_every:
            placed = self._cluster_buffer(tag)
            if placed:
                cluster_id = placed.get(sample_id)
                if cluster_id is None:
                    return Assignment("noise", sample_id, tag)
                return Assignment("clustered", sample_id, tag, cluster_id)
        return Assignment("buffered", sample_id, tag)

    def _tag_state(self, tag: str) -> dict[str, Any]:
        row = next(self.db["tags"].rows_where("tag = ?", [tag]), None)
        if row is None:
            row = {"tag": tag, "stable": 0, "pending": 0, "attempts": 0}
            self.db["tags"].insert(row)
        return row

    def _best_cluster(
        self, tag: str, vector: np.ndarray, kws: frozenset[str]
    ) -> tuple[int, float] | None:
        best = None
        for row in self.db.execute(
            "SELECT id, centroid, keyword_counts, size FROM clusters "
            "WHERE tag = ? AND merged_into IS NULL",
            [tag],
        ):
            cluster_id, centroid, counts, size = row
            gamma = self.config.cosine_weight * float(_unit(_vector(centroid)) @ vector) + (
                self.config.keyword_weight
                * _jaccard(kws, _cluster_keywords(json.loads(counts), size))
            )
            if best is None or gamma > best[1]:
                best = (cluster_id, gamma)
        return best

    def _join(
        self,
        cluster_id: int,
        members: list[tuple[int, np.ndarray, frozenset[str]]],
        via: str,
    ) -> None:
        row = self._cluster_row(cluster_id)
        size = row["size"]
        centroid_sum = _vector(row["centroid"]) * size
        counts = Counter(json.loads(row["keyword_counts"]))
        now = time.time()
        for sample_id, vector, kws in members:
            centroid_sum += vector
            counts.update(kws)
            self.db["memberships"].upsert(
                {"sample_id": sample_id, "cluster_id": cluster_id, "via": via, "joined": now},
                pk="sample_id",
            )
            self.db["samples"].update(
                sample_id, {"status": "assigned" if via == "gamma" else "clustered"}
            )
        size += len(members)
        self.db["clusters"].update(
            cluster_id,
            {
                "size": size,
                "centroid": _blob(centroid_sum / size),
                "keyword_counts": json.dumps(dict(counts)),
                "version": row["version"] + 1,
                "updated": now,
            },
        )

    # batch clustering

    def _cluster_buffer(self, tag: str) -> dict[int, int]:
        """Cluster the tag's buffer; on a stable result, create the clusters and empty the
        buffer. Returns sample id -> new cluster id (empty when unstable)."""
        rows = list(
            self.db.execute(
                "SELECT id, embedding, keywords FROM samples "
                "WHERE tag = ? AND status = 'buffered' ORDER BY id",
                [tag],
            )
        )
        ids = [r[0] for r in rows]
        vectors = np.stack([_vector(r[1]) for r in rows])
        started = time.perf_counter()
        labels = _hdbscan(vectors, self.config)
        check = self._stability(tag, ids, vectors, labels)
        seconds = time.perf_counter() - started
        state = self._tag_state(tag)
        self.db["tags"].update(tag, {"pending": 0, "attempts": state["attempts"] + 1})
        self.db["clusterings"].insert(
            {
                "tag": tag,
                "created": time.time(),
                "sample_ids": json.dumps(ids),
                "labels": json.dumps(labels.tolist()),
                "seconds": seconds,
                **check,
            }
        )
        if not check["stable"]:
            return {}

        placed: dict[int, int] = {}
        now = time.time()
        for label in sorted(set(labels.tolist()) - {-1}):
            members = [
                (ids[i], vectors[i], frozenset(json.loads(rows[i][2])))
                for i in np.flatnonzero(labels == label)
            ]
            cluster_id = (
                self.db["clusters"]
                .insert(
                    {
                        "tag": tag,
                        "size": 0,
                        "centroid": _blob(np.zeros(vectors.shape[1])),
                        "keyword_counts": "{}",
                        "version": 0,
                        "trained_version": None,
                        "trained_size": None,
                        "merged_into": None,
                        "created": now,
                        "updated": now,
                    }
                )
                .last_pk
            )
            self._join(cluster_id, members, via="hdbscan")
            placed.update({m[0]: cluster_id for m in members})
        noise = [ids[i] for i in np.flatnonzero(labels < 0)]
        self.db.execute(
            f"UPDATE samples SET status = 'noise' WHERE id IN ({','.join('?' * len(noise))})",
            noise,
        )
        self.db["tags"].update(tag, {"stable": 1})
        merged_into = self._merge(tag)
        return {s: merged_into.get(c, c) for s, c in placed.items()}

    def _stability(
        self, tag: str, ids: list[int], vectors: np.ndarray, labels: np.ndarray
    ) -> dict[str, Any]:
        previous = next(
            self.db["clusterings"].rows_where("tag = ?", [tag], order_by="id DESC", limit=1), None
        )
        reference = None
        if previous is not None and not previous["stable"]:
            previous_label = dict(
                zip(json.loads(previous["sample_ids"]), json.loads(previous["labels"]), strict=True)
            )
            shared = [i for i, sample_id in enumerate(ids) if sample_id in previous_label]
            if len(shared) >= self.config.min_shared:
                reference = (
                    "previous",
                    np.array(shared),
                    np.array([previous_label[ids[i]] for i in shared]),
                )
        if reference is None:
            rng = np.random.default_rng(self.config.seed + len(ids))
            subset = np.sort(
                rng.choice(len(ids), int(len(ids) * self.config.subsample_fraction), replace=False)
            )
            reference = (
                "subsample",
                subset,
                _hdbscan(vectors[subset], self.config),
            )

        kind, subset, reference_labels = reference
        # ARI over the samples both clusterings place in a cluster. Noise is "not
        # clustered", not a cluster of its own: counted as one, a few border samples
        # moving in or out of noise sink the ARI of a small one-cluster buffer to 0.
        both = (reference_labels >= 0) & (labels[subset] >= 0)
        ari = 0.0
        if both.sum() >= self.config.min_cluster_size:
            ari = float(adjusted_rand_score(reference_labels[both], labels[subset][both]))
        centroid_cosine = _matched_centroid_cosine(
            _centroids(vectors, labels), _centroids(vectors[subset], reference_labels)
        )
        clusters_found = int(labels.max()) + 1
        stable = (
            clusters_found > 0
            and ari >= self.config.ari_threshold
            and centroid_cosine >= self.config.centroid_threshold
        )
        return {
            "check": kind,
            "clusters_found": clusters_found,
            "noise": int((labels < 0).sum()),
            "ari": ari,
            "centroid_cosine": centroid_cosine,
            "stable": int(stable),
        }

    def _merge(self, tag: str) -> dict[int, int]:
        """Merge the closest pair of the tag's clusters while there are at least
        ``merge_min_clusters`` and their centroid cosine is at least ``merge_threshold``.
        Returns merged id -> surviving id."""
        merged: dict[int, int] = {}
        while True:
            rows = list(
                self.db["clusters"].rows_where(
                    "tag = ? AND merged_into IS NULL", [tag], order_by="id"
                )
            )
            if len(rows) < self.config.merge_min_clusters:
                return merged
            units = np.stack([_unit(_vector(r["centroid"])) for r in rows])
            similarity = units @ units.T
            np.fill_diagonal(similarity, -np.inf)
            a, b = np.unravel_index(np.argmax(similarity), similarity.shape)
            if similarity[a, b] < self.config.merge_threshold:
                return merged
            keep, gone = rows[min(a, b)], rows[max(a, b)]
            members = [
                (sample_id, _vector(blob), frozenset(json.loads(kws)))
                for sample_id, blob, kws in self.db.execute(
                    "SELECT s.id, s.embedding, s.keywords FROM samples s "
                    "JOIN memberships m ON m.sample_id = s.id WHERE m.cluster_id = ?",
                    [gone["id"]],
                )
            ]
            self._join(keep["id"], members, via="merge")
            self.db["clusters"].update(gone["id"], {"merged_into": keep["id"], "size": 0})
            merged.update({old: keep["id"] for old, new in merged.items() if new == gone["id"]})
            merged[gone["id"]] = keep["id"]

    # reading

    def _cluster_row(self, cluster_id: int) -> dict[str, Any]:
        row = next(self.db["clusters"].rows_where("id = ?", [cluster_id]), None)
        if row is None:
            raise KeyError(f"no cluster with id {cluster_id} in {self.path}")
        return row

    def _cluster(self, row: dict[str, Any], with_samples: bool) -> Cluster:
        samples = []
        if with_samples:
            samples = [
                _sample(r)
                for r in self.db.query(
                    "SELECT s.* FROM samples s JOIN memberships m ON m.sample_id = s.id "
                    "WHERE m.cluster_id = ? ORDER BY s.id",
                    [row["id"]],
                )
            ]
        return Cluster(
            id=row["id"],
            tag=row["tag"],
            size=row["size"],
            centroid=_unit(_vector(row["centroid"])),
            keywords=_cluster_keywords(json.loads(row["keyword_counts"]), row["size"]),
            version=row["version"],
            trained_version=row["trained_version"],
            trained_size=row["trained_size"],
            samples=samples,
        )

    def _ensure_tables(self) -> None:
        db = self.db
        with transaction(db):
            db["samples"].create(
                {
                    "id": int,
                    "text": str,
                    "tag": str,
                    "payload": str,
                    "embedding": bytes,
                    "keywords": str,
                    "status": str,
                    "created": float,
                },
                pk="id",
                if_not_exists=True,
            )
            db["clusters"].create(
                {
                    "id": int,
                    "tag": str,
                    "size": int,
                    "centroid": bytes,
                    "keyword_counts": str,
                    "version": int,
                    "trained_version": int,
                    "trained_size": int,
                    "merged_into": int,
                    "created": float,
                    "updated": float,
                },
                pk="id",
                if_not_exists=True,
            )
            db["memberships"].create(
                {"sample_id": int, "cluster_id": int, "via": str, "joined": float},
                pk="sample_id",
                if_not_exists=True,
            )
            db["clusterings"].create(
                {
                    "id": int,
                    "tag": str,
                    "created": float,
                    "sample_ids": str,
                    "labels": str,
                    "check": str,
                    "clusters_found": int,
                    "noise": int,
                    "ari": float,
                    "centroid_cosine": float,
                    "stable": int,
                    "seconds": float,
                },
                pk="id",
                if_not_exists=True,
            )
            db["tags"].create(
                {"tag": str, "stable": int, "pending": int, "attempts": int},
                pk="tag",
                if_not_exists=True,
            )
            db["samples"].create_index(["tag", "status"], if_not_exists=True)
            db["memberships"].create_index(["cluster_id"], if_not_exists=True)
            db["clusters"].create_index(["tag"], if_not_exists=True)


def _payload_json(payload: dict[str, Any] | None) -> str | None:
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
    try:
        return json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"payload is not JSON-serialisable: {error}") from error


def _sample(row: dict[str, Any]) -> Sample:
    payload = json.loads(row["payload"]) if row["payload"] else None
    return Sample(id=row["id"], text=row["text"], tag=row["tag"], payload=payload)


def _hdbscan(vectors: np.ndarray, config: BufferConfig) -> np.ndarray:
    """HDBSCAN labels (-1 is noise). Vectors are unit length, so Euclidean distance
    orders pairs as cosine does. A buffer of one kind of failure is one cluster, hence
    allow_single_cluster."""
    if len(vectors) < config.min_cluster_size:
        return np.full(len(vectors), -1)
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=config.min_cluster_size,
        min_samples=config.min_samples,
        allow_single_cluster=True,
    )
    return clusterer.fit_predict(vectors).astype(int)


def _centroids(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    found = sorted(set(labels.tolist()) - {-1})
    if not found:
        return np.zeros((0, vectors.shape[1]))
    return np.stack([_unit(vectors[labels == label].mean(axis=0)) for label in found])


def _matched_centroid_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of centroid pairs matched one-to-one (Hungarian); 0 if a side is empty."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    similarity = a @ b.T
    rows, cols = linear_sum_assignment(-similarity)
    return float(similarity[rows, cols].mean())
