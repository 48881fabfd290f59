"""Every failed sample with its embedding and current cluster: for maps of the failures."""

from __future__ import annotations

import sqlite_utils

from sage_agent.buffer.clustering import from_blob
from sage_agent.buffer.records import FailurePoint, sample_of


def failure_points(db: sqlite_utils.Database) -> list[FailurePoint]:
    """Every sample, oldest first, with its formal cluster followed through merges."""
    merged = dict(db.execute("SELECT id, merged_into FROM clusters").fetchall())
    query = (
        "SELECT s.*, m.cluster_id FROM samples s "
        "LEFT JOIN memberships m ON m.sample_id = s.id ORDER BY s.id"
    )
    points = []
    for row in db.query(query):
        cluster_id = row.pop("cluster_id")
        while merged.get(cluster_id) is not None:
            cluster_id = merged[cluster_id]
        vector = from_blob(row["embedding"])
        points.append(FailurePoint(sample_of(row), row["status"], cluster_id, vector))
    return points
