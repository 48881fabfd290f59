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
import time
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils
from langchain_core.embeddings import Embeddings

from sage_agent.buffer.claims import claim, mark_trained, release, renew
from sage_agent.buffer.clustering import (
    Reference,
    from_blob,
    hdbscan_labels,
    reference_clustering,
    stability,
    to_blob,
    unit,
    whole_labels,
)
from sage_agent.buffer.config import BufferConfig
from sage_agent.buffer.points import FailurePoint, failure_points
from sage_agent.buffer.records import Assignment, Cluster, Sample, payload_json, sample_of
from sage_agent.buffer.schema import create_tables
from sage_agent.buffer.tags import Tagger, cluster_keywords, default_tag, jaccard, keywords
from sage_agent.database import open_database, transaction
from sage_agent.embeddings import LazyDefaultEmbeddings
from sage_agent.errors import InvalidInput, NotFoundError
from sage_agent.tasks.plans import PLAN_TAG


class TriggerBuffer:
    """Streaming Buffer Clustering over a SQLite file (see the module docstring).

    ``db`` is the project's SQLite file; a new TriggerBuffer on it continues where the last
    stopped. Each add is one transaction: a crash loses at most the add in flight.

    A clustering is checked against the tag's previous one when that was unstable and
    shares ``min_shared`` samples, else against a clustering of a seeded subsample
    (``clustering.stability``; only noise is never stable). A stable clustering empties
    the buffer (HDBSCAN's noise leaves it with status "noise"); an unstable one leaves it
    as it was, up to ``max_buffer`` samples. A tag of ``whole_tags`` (a planner's failures)
    is one cluster that every later sample of the tag joins.
    """

    def __init__(
        self,
        db: str | Path,
        config: BufferConfig | None = None,
        embeddings: Embeddings | None = None,
        tagger: Tagger = default_tag,
        whole_tags: Collection[str] = (PLAN_TAG,),
    ) -> None:
        self.config = config or BufferConfig()
        self.whole_tags = frozenset(whole_tags)
        self.path = Path(db)
        self.db: sqlite_utils.Database = open_database(db, timeout=self.config.lock_timeout)
        self.tagger = tagger
        self.embeddings: Embeddings = embeddings or LazyDefaultEmbeddings()
        create_tables(self.db)

    # public API

    def add(
        self,
        text: str,
        *,
        tag: str | None = None,
        payload: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> Assignment:
        """Add one failed sample; see the class docstring. A sample with the ``key`` of
        one already added is not added again: its assignment as it stands is returned
        (a graph node re-run after a crash adds its sample once)."""
        return self.add_many([text], tags=[tag], payloads=[payload], keys=[key])[0]

    def add_many(
        self,
        texts: Sequence[str],
        *,
        tags: Sequence[str | None] | None = None,
        payloads: Sequence[dict[str, Any] | None] | None = None,
        keys: Sequence[str | None] | None = None,
    ) -> list[Assignment]:
        """Add samples in order with one embedding call; each add is its own transaction."""
        tags = list(tags) if tags is not None else [None] * len(texts)
        payloads = list(payloads) if payloads is not None else [None] * len(texts)
        keys = list(keys) if keys is not None else [None] * len(texts)
        if not len(texts) == len(tags) == len(payloads) == len(keys):
            raise InvalidInput("texts, tags, payloads and keys must have the same length")
        encoded = [payload_json(p) for p in payloads]
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"sample text must be a non-empty string, not {text!r}")
        vectors = np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float64)
        for text, vector in zip(texts, vectors, strict=True):
            if not np.any(vector) or not np.all(np.isfinite(vector)):
                raise InvalidInput(f"sample {text[:60]!r} embeds to a zero or non-finite vector")
        results = []
        for text, tag, payload, encoded_payload, key, vector in zip(
            texts, tags, payloads, encoded, keys, vectors, strict=True
        ):
            tag = tag or self.tagger(text, payload)
            with transaction(self.db):
                known = self._keyed(key) if key is not None else None
                results.append(
                    known or self._add_one(text, tag, encoded_payload, unit(vector), key)
                )
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

    def mark_trained(self, cluster_id: int, version: int, size: int | None = None) -> None:
        """Record the members' ``version`` (and ``size``) adapters trained on; frees the claim."""
        self._cluster_row(cluster_id)
        mark_trained(self.db, cluster_id, version, size)

    def claim(self, cluster_id: int, owner: str, seconds: float) -> bool:
        """Claim a cluster to train it (``claims``): True unless another holds it."""
        self._cluster_row(cluster_id)
        return claim(self.db, cluster_id, owner, seconds)

    def renew(self, cluster_id: int, owner: str, seconds: float) -> None:
        """Keep ``owner``'s claim for ``seconds`` more (its heartbeat while it trains)."""
        renew(self.db, cluster_id, owner, seconds)

    def release(self, cluster_id: int, owner: str) -> None:
        """Give up a claim (training failed or was interrupted)."""
        release(self.db, cluster_id, owner)

    def buffered(self, tag: str | None = None) -> list[Sample]:
        """Samples waiting in the buffer (of one tag, or all), oldest first."""
        where, args = "status = 'buffered'", []
        if tag is not None:
            where, args = where + " AND tag = ?", [tag]
        return [sample_of(r) for r in self.db["samples"].rows_where(where, args, order_by="id")]

    def base_failures(self, tag: str) -> int:
        """Samples of ``tag`` the base model failed: those whose payload names no adapter."""
        where = "tag = ? AND json_extract(payload, '$.adapter') IS NULL"
        return self.db["samples"].count_where(where, [tag])

    def points(self) -> list[FailurePoint]:
        """Every sample with its embedding and current cluster (``failure_points``)."""
        return failure_points(self.db)

    def stable_tags(self) -> list[str]:
        return [r["tag"] for r in self.db["tags"].rows_where("stable = 1", order_by="tag")]

    def clusterings(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Every clustering attempt with its check: for traces and benchmarks."""
        where, args = ("tag = ?", [tag]) if tag is not None else (None, [])
        return list(self.db["clusterings"].rows_where(where, args, order_by="id"))

    def close(self) -> None:
        self.db.close()

    # one add, inside a transaction

    def _keyed(self, key: str) -> Assignment | None:
        """The assignment of the sample added under ``key``, as it stands now."""
        row = self.db.execute(
            "SELECT s.id, s.tag, s.status, m.cluster_id FROM samples s "
            "LEFT JOIN memberships m ON m.sample_id = s.id WHERE s.key = ?",
            [key],
        ).fetchone()
        if row is None:
            return None
        sample_id, tag, status, cluster_id = row
        if cluster_id is not None:
            cluster_id = self.cluster(cluster_id).id  # follows a merge
        status = {"expired": "buffered"}.get(status, status)
        return Assignment(status, sample_id, tag, cluster_id)

    def _add_one(
        self, text: str, tag: str, payload_json: str | None, vector: np.ndarray, key: str | None
    ) -> Assignment:
        kws = keywords(text)
        sample_id = (
            self.db["samples"]
            .insert(
                {
                    "text": text,
                    "tag": tag,
                    "payload": payload_json,
                    "embedding": to_blob(vector),
                    "keywords": json.dumps(sorted(kws)),
                    "status": "buffered",
                    "created": time.time(),
                    "key": key,
                }
            )
            .last_pk
        )
        state = self._tag_state(tag)
        if state["stable"]:
            best = self._best_cluster(tag, vector, kws)
            if best is not None and (best[1] >= self.config.tau or tag in self.whole_tags):
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
            gamma = self.config.cosine_weight * float(unit(from_blob(centroid)) @ vector) + (
                self.config.keyword_weight
                * jaccard(kws, cluster_keywords(json.loads(counts), size))
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
        centroid_sum = from_blob(row["centroid"]) * size
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
                "centroid": to_blob(centroid_sum / size),
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
        vectors = np.stack([from_blob(r[1]) for r in rows])
        started = time.perf_counter()
        whole = tag in self.whole_tags
        labels = (
            whole_labels(vectors, self.config) if whole else hdbscan_labels(vectors, self.config)
        )
        check = stability(vectors, labels, self._reference(tag, ids, vectors), self.config)
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
                        "centroid": to_blob(np.zeros(vectors.shape[1])),
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

    def _reference(self, tag: str, ids: list[int], vectors: np.ndarray) -> Reference:
        previous = next(
            self.db["clusterings"].rows_where("tag = ?", [tag], order_by="id DESC", limit=1), None
        )
        return reference_clustering(previous, ids, vectors, self.config, tag in self.whole_tags)

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
            units = np.stack([unit(from_blob(r["centroid"])) for r in rows])
            similarity = units @ units.T
            np.fill_diagonal(similarity, -np.inf)
            a, b = np.unravel_index(np.argmax(similarity), similarity.shape)
            if similarity[a, b] < self.config.merge_threshold:
                return merged
            keep, gone = rows[min(a, b)], rows[max(a, b)]
            members = [
                (sample_id, from_blob(blob), frozenset(json.loads(kws)))
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
            raise NotFoundError(f"no cluster with id {cluster_id} in {self.path}")
        return row

    def _cluster(self, row: dict[str, Any], with_samples: bool) -> Cluster:
        samples = []
        if with_samples:
            samples = [
                sample_of(r)
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
            centroid=unit(from_blob(row["centroid"])),
            keywords=cluster_keywords(json.loads(row["keyword_counts"]), row["size"]),
            version=row["version"],
            trained_version=row["trained_version"],
            trained_size=row["trained_size"],
            samples=samples,
        )
