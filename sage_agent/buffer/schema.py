"""The buffer's tables in the project's SQLite file.

samples: every failed sample with its embedding and status (buffered, assigned,
clustered, noise, expired); clusters: formal clusters (a merged one points at the
cluster it joined); memberships: sample -> cluster; clusterings: every clustering
attempt with its stability check; tags: per tag, whether it is stable.
"""

from __future__ import annotations

import sqlite_utils

from sage_agent.database import transaction


def create_tables(db: sqlite_utils.Database) -> None:
    """The buffer's tables and indexes, created where missing."""
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
                "key": str,
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
                "claimed_by": str,
                "claimed_until": float,
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
        db["samples"].create_index(["key"], unique=True, if_not_exists=True)
        db["memberships"].create_index(["cluster_id"], if_not_exists=True)
        db["clusters"].create_index(["tag"], if_not_exists=True)
