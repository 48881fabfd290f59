"""TriggerBuffer (Streaming Buffer Clustering) on a real SQLite file and real HDBSCAN,
with an embedder whose geometry the tests control."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from sage_agent.buffer import BufferConfig, TriggerBuffer, default_tag, keywords
from sage_agent.database import DatabaseError, DatabaseLocked, SchemaVersionError
from sage_agent.tasks.steps import operator_signature, operators_within

DIM = 32
_BASES = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0]


def _index(group: str) -> int:
    return ord(group[0]) % DIM


class GroupEmbeddings(Embeddings):
    """Text "<group>:<rest>": the group's base direction plus small noise seeded by the text.
    Group "near" sits at cosine ~0.9 from group "a"; group "zero" embeds to zeros."""

    def __init__(self, noise: float = 0.03) -> None:
        self.noise = noise

    def _vector(self, text: str) -> list[float]:
        group = text.split(":", 1)[0]
        if group == "zero":
            return [0.0] * DIM
        base = _BASES[_index("a")] + 0.45 * _BASES[7] if group == "near" else _BASES[_index(group)]
        seed = int(hashlib.md5(text.encode()).hexdigest()[:8], 16)
        noise = np.random.default_rng(seed).normal(scale=self.noise, size=DIM)
        return (base / np.linalg.norm(base) + noise).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def _texts(groups: str, per_group: int, start: int = 0) -> list[str]:
    """Interleaved samples: a:0, b:0, c:0, a:1, ..."""
    return [f"{g}: apples {i}" for i in range(start, start + per_group) for g in groups]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sage.sqlite"


def _buffer(path: Path, **config) -> TriggerBuffer:
    return TriggerBuffer(path, BufferConfig(**config), embeddings=GroupEmbeddings())


# tags and keywords


@pytest.mark.parametrize(
    ("expression", "signature"),
    [
        ("16-3-4", "-"),
        ("4*6+2", "+*"),
        ("-3+10", "+"),
        ("2**3", "^"),
        ("(4+5)/3", "+/"),
        ("10 ÷ 2 × 3", "*/"),
        ("12", ""),
        ("17%5", "%"),
    ],
)
def test_operator_signature(expression: str, signature: str) -> None:
    assert operator_signature(expression) == signature


@pytest.mark.parametrize(
    ("part", "signature", "within"),
    [
        ("*", "*/", True),
        ("+-", "+-*", True),
        ("*/", "*/", False),
        ("+", "*/", False),
        ("plan", "*/", False),
        ("+", "default", False),
        ("", "+", False),
    ],
)
def test_operators_within(part: str, signature: str, within: bool) -> None:
    assert operators_within(part, signature) is within


def test_default_tag() -> None:
    assert default_tag("anything", {"expression": "4*6"}) == "*"
    assert default_tag("How many? Compute 24-5.") == "-"
    assert default_tag("What is the capital of France?") == "default"


def test_keywords_normalise_numbers() -> None:
    assert (
        keywords("Tom has 3 apples") == keywords("Tom has 7 apples") == {"tom", "apples", "<num>"}
    )
    assert "+" in keywords("Compute 4+5")


# streaming clustering


def test_first_clustering_at_T_creates_pure_clusters(db_path: Path) -> None:
    buffer = _buffer(db_path)
    results = buffer.add_many(_texts("abc", 9), tags=["t"] * 27)
    assert [r.status for r in results[:24]] == ["buffered"] * 24
    assert results[24].status == "clustered"  # the 25th sample starts the clustering
    clusters = buffer.clusters("t")
    assert len(clusters) == 3
    for cluster in clusters:
        assert len({s.text[0] for s in cluster.samples}) == 1  # one group per cluster
        assert cluster.size == len(cluster.samples)
    assert buffer.stable_tags() == ["t"]
    (attempt,) = buffer.clusterings("t")
    assert attempt["check"] == "subsample" and attempt["stable"] == 1 and attempt["ari"] >= 0.8
    assert len(buffer.buffered("t")) == 27 - sum(c.size for c in clusters)


def test_stable_tag_assigns_by_gamma(db_path: Path) -> None:
    buffer = _buffer(db_path)
    buffer.add_many(_texts("abc", 9), tags=["t"] * 27)
    cluster_of_a = next(c for c in buffer.clusters("t") if c.samples[0].text.startswith("a"))
    joined = buffer.add("a: apples 100", tag="t", payload={"expression": "1+1"})
    assert joined.status == "assigned" and joined.cluster_id == cluster_of_a.id
    assert joined.gamma >= 0.75
    after = buffer.cluster(cluster_of_a.id)
    assert after.size == cluster_of_a.size + 1 and after.version == cluster_of_a.version + 1
    assert after.samples[-1].payload == {"expression": "1+1"}
    stranger = buffer.add("q: something else entirely", tag="t")
    assert stranger.status == "buffered" and stranger.cluster_id is None


def test_stable_clustering_empties_the_buffer(db_path: Path) -> None:
    buffer = _buffer(db_path)
    buffer.add_many(_texts("abc", 8), tags=["t"] * 24)
    outlier = buffer.add("q: nothing like the others", tag="t")  # the 25th: starts clustering
    assert outlier.status == "noise" and outlier.cluster_id is None
    assert buffer.buffered() == [] and len(buffer.clusters("t")) == 3
    statuses = dict(buffer.db.execute("SELECT status, COUNT(*) FROM samples GROUP BY status"))
    assert statuses == {"clustered": 24, "noise": 1}


def test_a_never_stable_buffer_is_capped(db_path: Path) -> None:
    buffer = _buffer(db_path, max_buffer=30)
    with _hdbscan_gives(lambda v, _: np.full(len(v), -1)):
        buffer.add_many(_texts("abcd", 10), tags=["t"] * 40)
    assert buffer.stable_tags() == []
    assert [s.id for s in buffer.buffered("t")] == list(range(11, 41))  # the newest 30
    expired = buffer.db.execute("SELECT COUNT(*) FROM samples WHERE status = 'expired'")
    assert expired.fetchone()[0] == 10


def test_tags_are_clustered_separately(db_path: Path) -> None:
    buffer = _buffer(db_path)
    buffer.add_many(_texts("ab", 12), tags=["x"] * 24)  # 24 < T: nothing yet
    buffer.add_many(_texts("cd", 12), tags=["y"] * 24)
    assert buffer.clusters() == [] and len(buffer.buffered()) == 48
    buffer.add("a: apples 99", tag="x")
    assert {c.tag for c in buffer.clusters()} == {"x"}
    assert len(buffer.buffered("y")) == 24


def test_unstructured_buffer_stays_unstable_then_retries(db_path: Path) -> None:
    buffer = TriggerBuffer(db_path, embeddings=GroupEmbeddings(noise=1.0))
    # Pure noise around many directions: no stable structure.
    texts = [f"{chr(97 + i % 26)}: {i}" for i in range(25)]
    results = buffer.add_many(texts, tags=["t"] * 25)
    assert all(r.status == "buffered" for r in results)
    attempts = buffer.clusterings("t")
    assert len(attempts) == 1 and attempts[0]["stable"] == 0
    assert buffer.clusters() == [] and buffer.stable_tags() == []
    buffer.add_many([f"z: {i}" for i in range(4)], tags=["t"] * 4)
    assert len(buffer.clusterings("t")) == 1  # waits recluster_every new samples
    buffer.add("z: 4", tag="t")
    assert len(buffer.clusterings("t")) == 2
    assert buffer.clusterings("t")[1]["check"] == "previous"


@pytest.mark.parametrize(
    ("subsample_labels", "stable"),
    [
        ([-1] + [0] * 7, 1),  # the same cluster, border samples in and out of noise
        ([0] * 4 + [1] * 4, 0),  # the subsample splits it in two
    ],
)
def test_noise_is_left_out_of_the_stability_ari(
    db_path: Path, subsample_labels: list[int], stable: int
) -> None:
    def labels(vectors: np.ndarray, _config: BufferConfig) -> np.ndarray:
        return np.array([0] * 8 + [-1] * 2 if len(vectors) == 10 else subsample_labels)

    buffer = _buffer(db_path, buffer_size=10, min_cluster_size=3)
    with _hdbscan_gives(labels):
        buffer.add_many(_texts("a", 10), tags=["t"] * 10)
    (attempt,) = buffer.clusterings("t")
    assert attempt["check"] == "subsample" and attempt["stable"] == stable


def test_close_clusters_merge_at_three_or_more(db_path: Path) -> None:
    # Tight groups, so that HDBSCAN splits "a" from "near" and the split is stable.
    buffer = TriggerBuffer(db_path, BufferConfig(buffer_size=40), GroupEmbeddings(noise=0.01))
    results = buffer.add_many(
        [f"{g}: apples {i}" for i in range(10) for g in ("a", "near", "b", "c")], tags=["t"] * 40
    )
    assert buffer.clusterings("t")[0]["clusters_found"] == 4
    clusters = buffer.clusters("t")
    assert len(clusters) == 3  # "a" and "near" merged: centroid cosine ~0.91 >= 0.8
    merged = next(c for c in clusters if {s.text.split(":")[0] for s in c.samples} == {"a", "near"})
    assert merged.size == 20
    assert results[-1].cluster_id in {c.id for c in clusters}  # never a merged-away id
    gone = [r for r in buffer.db["clusters"].rows_where("merged_into IS NOT NULL")]
    assert len(gone) == 1 and buffer.cluster(gone[0]["id"]).id == merged.id


def test_mark_trained_records_the_version_and_size(db_path: Path) -> None:
    buffer = _buffer(db_path)
    buffer.add_many(_texts("abc", 9), tags=["t"] * 27)
    target = buffer.clusters("t")[0]
    assert (target.trained_version, target.trained_size) == (None, None)
    buffer.mark_trained(target.id, target.version, target.size)
    trained = buffer.cluster(target.id)
    assert (trained.trained_version, trained.trained_size) == (target.version, target.size)
    letter = target.samples[0].text[0]
    buffer.add(f"{letter}: apples 500", tag="t")  # a new member: a new version
    grown = buffer.cluster(target.id)
    assert grown.version > grown.trained_version and grown.size == target.size + 1
    with pytest.raises(KeyError, match="no cluster with id 999"):
        buffer.mark_trained(999, 1)


@contextlib.contextmanager
def _hdbscan_gives(labels):
    """HDBSCAN replaced by ``labels(vectors, config)``, for the buffer and its check."""
    with (
        mock.patch("sage_agent.buffer.buffer.hdbscan_labels", labels),
        mock.patch("sage_agent.buffer.clustering.hdbscan_labels", labels),
    ):
        yield


# persistence and crash safety


def _snapshot(buffer: TriggerBuffer) -> tuple:
    return (
        [
            (
                c.id,
                c.tag,
                c.size,
                c.version,
                c.centroid.round(6).tolist(),
                [s.id for s in c.samples],
            )
            for c in buffer.clusters()
        ],
        [s.id for s in buffer.buffered()],
        buffer.stable_tags(),
        [(k["tag"], k["stable"], k["ari"]) for k in buffer.clusterings()],
    )


def test_reopening_continues_exactly(tmp_path: Path) -> None:
    stream = _texts("abc", 14)
    tags = ["t"] * len(stream)
    straight = _buffer(tmp_path / "one.sqlite")
    straight.add_many(stream, tags=tags)

    first = _buffer(tmp_path / "two.sqlite")
    first.add_many(stream[:20], tags=tags[:20])
    first.close()
    second = _buffer(tmp_path / "two.sqlite")
    assert len(second.buffered()) == 20
    second.add_many(stream[20:30], tags=tags[20:30])
    second.close()
    third = _buffer(tmp_path / "two.sqlite")
    third.add_many(stream[30:], tags=tags[30:])
    assert _snapshot(third) == _snapshot(straight)
    assert _snapshot(_buffer(tmp_path / "two.sqlite")) == _snapshot(third)


def test_a_crash_inside_an_add_loses_only_that_add(db_path: Path) -> None:
    buffer = _buffer(db_path)
    buffer.add_many(_texts("abc", 8), tags=["t"] * 24)
    before = _snapshot(buffer)
    with (
        mock.patch.object(TriggerBuffer, "_merge", side_effect=RuntimeError("killed")),
        pytest.raises(RuntimeError, match="killed"),
    ):
        buffer.add("a: apples 77", tag="t")  # the 25th add clusters, then dies
    assert _snapshot(buffer) == before
    assert _snapshot(_buffer(db_path)) == before
    assert buffer.add("a: apples 77", tag="t").status == "clustered"


# bad input


def test_bad_samples(db_path: Path) -> None:
    buffer = _buffer(db_path)
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="non-empty string"):
            buffer.add(empty)
    with pytest.raises(ValueError, match="zero or non-finite vector"):
        buffer.add("zero: nothing")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        buffer.add("a: x", payload={"when": object()})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        buffer.add("a: x", payload={"value": float("nan")})
    with pytest.raises(TypeError, match="must be a dict"):
        buffer.add("a: x", payload=["not", "a", "dict"])
    assert buffer.buffered() == []  # nothing half-written


def test_locked_database_waits_then_says_so(db_path: Path) -> None:
    buffer = _buffer(db_path, lock_timeout=0.3)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseLocked, match="locked by another process"):
        buffer.add("a: apples", tag="t")
    other.execute("ROLLBACK")
    assert buffer.add("a: apples", tag="t").status == "buffered"


def test_incompatible_schema_is_refused_untouched(db_path: Path) -> None:
    first = _buffer(db_path)
    first.add("a: apples", tag="t")
    # Closed before the file is read: a connection closed later (by the garbage
    # collector) checkpoints its WAL into the file, and the comparison would see that.
    first.close()
    db = sqlite3.connect(db_path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = db_path.read_bytes()
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*Upgrade sage-agent"):
        _buffer(db_path)
    assert db_path.read_bytes() == before


def test_foreign_or_corrupt_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(SchemaVersionError, match="not written by sage-agent"):
        _buffer(foreign)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match="not a sage-agent SQLite database"):
        _buffer(corrupt)
    with pytest.raises(DatabaseError, match="does not exist"):
        _buffer(tmp_path / "missing-folder" / "db.sqlite")


@pytest.mark.parametrize(
    "config",
    [
        {"tau": 2.0},
        {"min_cluster_size": 1},
        {"buffer_size": 3},
        {"buffer_size": 5},  # its 80% subsample (4) is smaller than a cluster (5)
        {"recluster_every": 0},
        {"subsample_fraction": 1.0},
    ],
)
def test_bad_config(config: dict) -> None:
    with pytest.raises(ValueError):
        BufferConfig(**config)


def test_a_keyed_sample_is_added_once(db_path: Path) -> None:
    buffer = _buffer(db_path)
    first = buffer.add("a: apples 1", tag="t", key="thread-1:step-0")
    again = buffer.add("a: apples 1", tag="t", key="thread-1:step-0")  # a node re-run
    other = buffer.add("a: apples 1", tag="t", key="thread-2:step-0")
    assert again == first and other.sample_id != first.sample_id
    assert len(buffer.buffered("t")) == 2


def test_base_failures_count_the_samples_no_adapter_answered(db_path: Path) -> None:
    buffer = _buffer(db_path)
    buffer.add("a: apples 1", tag="t", payload={"adapter": None})
    buffer.add("a: apples 2", tag="t")  # a payload without the key: the base model's
    buffer.add("a: apples 3", tag="t", payload={"adapter": "c1-a1"})
    buffer.add("b: pears 1", tag="u", payload={"adapter": None})
    assert (buffer.base_failures("t"), buffer.base_failures("u"), buffer.base_failures("v")) == (
        2,
        1,
        0,
    )


def test_a_cluster_is_claimed_by_one_owner_at_a_time(db_path: Path) -> None:
    import socket
    import subprocess
    import sys

    buffer = _buffer(db_path)
    buffer.add_many(_texts("abc", 9), tags=["t"] * 27)
    cluster = buffer.clusters("t")[0]
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert buffer.claim(cluster.id, f"{host}:{sleeper.pid}", 600)
        assert not buffer.claim(cluster.id, "me", 600)  # a live owner holds it
        assert buffer.claim(cluster.id, f"{host}:{sleeper.pid}", 600)  # its own again
    finally:
        sleeper.kill()
        sleeper.wait()
    assert buffer.claim(cluster.id, "me", 600)  # its owner is gone: free at once
    assert not buffer.claim(cluster.id, "someone-else-elsewhere:1", 600)
    buffer.release(cluster.id, "me")
    assert buffer.claim(cluster.id, "someone-else-elsewhere:1", 600)
    buffer.mark_trained(cluster.id, cluster.version, cluster.size)  # frees the claim
    assert buffer.claim(cluster.id, "me", 600)


def test_claims_expire_by_heartbeat_elsewhere_and_hold_while_their_owner_lives(
    db_path: Path,
) -> None:
    import socket

    from sage_agent.database import this_owner

    buffer = _buffer(db_path)
    buffer.add_many(_texts("abc", 9), tags=["t"] * 27)
    cluster = buffer.clusters("t")[0]
    mine = this_owner()
    assert buffer.claim(cluster.id, mine, -1)  # expired at once, but this thread lives
    assert not buffer.claim(cluster.id, f"{socket.gethostname()}:1:2", 600)
    buffer.release(cluster.id, mine)
    assert buffer.claim(cluster.id, "elsewhere:7:8", 600)
    assert not buffer.claim(cluster.id, mine, 600)  # its heartbeat is fresh
    buffer.renew(cluster.id, "elsewhere:7:8", -1)  # its heartbeat stopped
    assert buffer.claim(cluster.id, mine, 600)


def test_a_whole_tag_is_one_cluster_that_every_later_sample_joins(tmp_path: Path) -> None:
    # A planner's failures are questions spread evenly (here: orthogonal directions)
    config = BufferConfig(buffer_size=10, min_cluster_size=3)
    spread = [f"{chr(65 + i)}: question {i}" for i in range(11)]
    whole = TriggerBuffer(tmp_path / "whole.db", config, GroupEmbeddings(), whole_tags=("plan",))
    assert [whole.add(t, tag="plan").status for t in spread[:10]][-1] == "clustered"
    (cluster,) = whole.clusters("plan")
    assert cluster.size == 10 and whole.clusterings("plan")[-1]["stable"] == 1
    later = whole.add(spread[10], tag="plan")  # far from the centroid, and joins
    assert later.status == "assigned" and later.cluster_id == cluster.id
    # the same stream under a tag clustered by HDBSCAN: the far sample joins nothing
    split = TriggerBuffer(tmp_path / "split.db", config, GroupEmbeddings(), whole_tags=())
    for text in spread[:10]:
        split.add(text, tag="plan")
    assert split.add(spread[10], tag="plan").status != "assigned"
