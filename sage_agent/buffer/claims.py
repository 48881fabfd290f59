"""Claims on clusters (which process trains a cluster, until when) and what a cluster
was last trained on.

A claim names its owner (a thread: "host:pid:thread") and an expiry that its owner's
heartbeat renews while it trains. A claim whose owner is gone (on this machine) is free at
once, so a killed run does not block its own resume; one whose owner lives is held however
late its heartbeat; one of another machine is free once its heartbeat has expired.
"""

from __future__ import annotations

import time

import sqlite_utils

from sage_agent.database import holds, transaction


def claim(db: sqlite_utils.Database, cluster_id: int, owner: str, seconds: float) -> bool:
    """Take the cluster for ``seconds`` unless another live owner holds it."""
    now = time.time()
    with transaction(db):
        holder, until = db.execute(
            "SELECT claimed_by, claimed_until FROM clusters WHERE id = ?", [cluster_id]
        ).fetchone()
        if holder != owner and holds(holder, until, now=now):
            return False
        db["clusters"].update(cluster_id, {"claimed_by": owner, "claimed_until": now + seconds})
    return True


def renew(db: sqlite_utils.Database, cluster_id: int, owner: str, seconds: float) -> None:
    """A heartbeat: push the expiry of ``owner``'s claim ``seconds`` ahead."""
    with transaction(db):
        db.execute(
            "UPDATE clusters SET claimed_until = ? WHERE id = ? AND claimed_by = ?",
            [time.time() + seconds, cluster_id, owner],
        )


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
