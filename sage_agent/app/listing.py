"""``sage-agent adapters`` and ``sage-agent clusters``: what the store and the buffer hold.
``adapters rm`` is the only one that writes."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from sage_agent.database import adapter_root, existing_database, reading
from sage_agent.errors import InvalidInput
from sage_agent.store.registry import AdapterRegistry


def adapters_command(args: argparse.Namespace) -> int:
    db = existing_database(args.db)
    if args.action == "rm":
        return _remove_adapter(AdapterRegistry(db, adapter_root(db)), args.id)
    with reading(db) as (readable, _):
        return _read_adapters(AdapterRegistry(readable, adapter_root(db)), args)


def _remove_adapter(registry: AdapterRegistry, adapter_id: str | None) -> int:
    if not adapter_id:
        raise InvalidInput("adapters rm needs an adapter id")
    registry.remove(adapter_id)
    print(f"removed adapter {adapter_id}")
    return 0


def _read_adapters(registry: AdapterRegistry, args: argparse.Namespace) -> int:
    """``adapters list | show | export``: they read the registry, never write it."""
    if args.action == "list":
        records = registry.adapters(status=None)
        if args.json:
            print(json.dumps([asdict(r) for r in records]))
            return 0
        from tabulate import tabulate

        columns = ("id", "cluster_id", "tag", "position", "val_em", "base_val_em", "uses")
        columns += ("wins", "route_all", "status")
        rows = [[getattr(r, c) for c in columns] for r in records]
        print(tabulate(rows, headers=columns, floatfmt=".2f"))
        return 0
    if not args.id:
        raise InvalidInput(f"adapters {args.action} needs an adapter id")
    if args.action == "show":
        print(json.dumps(asdict(registry.get(args.id)), indent=1))
    elif args.action == "export":
        if args.to is None:
            raise InvalidInput("adapters export needs --to FOLDER")
        from sage_agent.store.export import export_adapter

        folder = export_adapter(registry.get(args.id), args.to)
        config = json.loads((folder / "adapter_config.json").read_text())
        print(f"exported adapter {args.id} to {folder} (base {config['base_model_name_or_path']})")
    return 0


def clusters_command(args: argparse.Namespace) -> int:
    from sage_agent.buffer import TriggerBuffer

    with reading(existing_database(args.db)) as (db, _):
        buffer = TriggerBuffer(db)
        clusters, waiting = buffer.clusters(with_samples=False), len(buffer.buffered())
    rows = [
        {
            "id": c.id,
            "tag": c.tag,
            "size": c.size,
            "keywords": sorted(c.keywords)[:8],
            "version": c.version,
            "trained_version": c.trained_version,
        }
        for c in clusters
    ]
    if args.json:
        print(json.dumps({"clusters": rows, "buffered": waiting}))
        return 0
    from tabulate import tabulate

    print(tabulate([list(r.values()) for r in rows], headers=list(rows[0]) if rows else ()))
    print(f"{waiting} samples waiting in the buffer")
    return 0
