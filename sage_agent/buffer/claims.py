"""Claims on clusters (which process trains a cluster, until when) and what a cluster
was last trained on.

A claim names its owner ("host:pid") and expires; a claim whose owner process is gone
(on this machine) is free at once, so a killed run does not block its own resume.
"""

from __future__ import annotations

import time

import sqlite_utils

from sage_agent.database import owner_alive, transaction


def claim(db: sqlite_utils.Database, cluster_id: int, owner: str, seconds: float) -> bool:
    """Take the cluster for ``seconds`` unless another live owner holds it."""
    now = time.time()
    with transaction(db):
        holder, until = db.execute(
            "SELECT claimed_by, claimed_until FROM clusters WHERE id = ?", [cluster_id]
        ).fetchone()
        held = holder not in (None, owner) and until is not None and until > now
        if held and owner_alive(holder):
            return False
        db["clusters"].update(cluster_id, {"claimed_by": owner, "claimed_until": now + seconds})
    return True


def release(db: sqlite_utils.Database, cluster_id: int, owner: str) -> None:
    """Give the cluster up, if ``owner`` holds it."""
    with transaction(db):
        db.execute(
            "UPDATE clusters SET claimed_by = NULL, claimed_until = NULL "
            "WHERE id = ? AND claimed_by = ?",
            [cluster_id, owner],
        )


def mark_trained(
    db: sqlite_utils.Database, cluster_id: int, version: int, size: int | None
) -> None:
    """Record the members' version (and count) adapters were trained on; free the claim."""
    trained = {"trained_version": version, "trained_size": size}
    with transaction(db):
        db["clusters"].update(cluster_id, {**trained, "claimed_by": None, "claimed_until": None})
