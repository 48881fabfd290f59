"""The sage-agent command line: a thin layer over SageAgent, the store and the buffer.

Errors the user can fix (every ``SageError``: a missing file, an unknown model or thread,
a locked or foreign database) print one line to stderr and exit with 1; usage errors exit
with 2. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

from sage_agent.agent import RunSummary, SageAgent
from sage_agent.buffer import TriggerBuffer
from sage_agent.errors import (
    ConfigError,
    DataError,
    InvalidInput,
    NotFoundError,
    RunError,
    SageError,
)
from sage_agent.progress import run_with_progress
from sage_agent.store import AdapterRegistry, adapter_root


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sage-agent: %(message)s")
    try:
        return args.handler(args)
    except SageError as error:
        print(f"sage-agent: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nsage-agent: interrupted; the run resumes with `sage-agent run --resume`",
            file=sys.stderr,
        )
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the embedded default end to end, offline")
    demo.add_argument("--problems", type=int, default=80, help="most generated problems to run")
    demo.add_argument("--seed", type=int, default=0, help="seed of the problem generator")
    demo.add_argument("--db", type=Path, default=Path("sage-demo.db"))
    demo.set_defaults(handler=_demo)

    for name, text in (
        ("run", "stream tasks through the graph, training adapters as clusters get ready"),
        ("eval", "answer tasks with routing to existing adapters; trains nothing"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--data", type=Path, help="JSONL task file (not with --resume)")
        command.add_argument("--limit", type=int, default=None, help="first N tasks only")
        command.add_argument("--db", type=Path, default=Path("sage.db"))
        command.add_argument("--model", default=None, help="hub id or local path")
        command.add_argument(
            "--decompose", choices=("socratic", "annotations", "llm"), default="socratic"
        )
        command.add_argument(
            "--substitute",
            choices=("references", "answers"),
            default="references",
            help="what later steps use: the references (score each step on its own) or "
            "the model's own earlier answers",
        )
        command.add_argument("--strict", action="store_true", help="stop at a malformed line")
        command.add_argument("--json", action="store_true", help="one JSON object on stdout")
        if name == "run":
            command.add_argument(
                "--resume", action="store_true", help="continue the latest unfinished run"
            )
            command.add_argument("--budget", type=float, default=None, help="seconds per search")
            command.add_argument(
                "--buffer-size",
                type=int,
                default=None,
                help="failures a tag collects before its first clustering (the paper's T; "
                "default 25)",
            )
            command.add_argument(
                "--min-cluster",
                type=int,
                default=None,
                help="smallest cluster the LoRA Store trains on (default 12: "
                "StoreConfig.min_train_samples)",
            )
        else:
            command.add_argument("--no-adapters", action="store_true", help="base model only")
        command.set_defaults(handler=_run)

    trace = sub.add_parser("trace", help="a thread step by step")
    trace.add_argument("thread", nargs="?", help="thread id (default: the latest)")
    trace.add_argument("--db", type=Path, default=Path("sage.db"))
    trace.add_argument("--format", choices=("table", "json", "mermaid", "html"), default="table")
    trace.add_argument("--out", type=Path, default=None, help="write to this file")
    trace.set_defaults(handler=_trace)

    adapters = sub.add_parser("adapters", help="the registered adapters")
    adapters.add_argument("action", choices=("list", "show", "rm"))
    adapters.add_argument("id", nargs="?")
    adapters.add_argument("--db", type=Path, default=Path("sage.db"))
    adapters.add_argument("--json", action="store_true")
    adapters.set_defaults(handler=_adapters)

    clusters = sub.add_parser("clusters", help="the failure clusters")
    clusters.add_argument("action", choices=("list",))
    clusters.add_argument("--db", type=Path, default=Path("sage.db"))
    clusters.add_argument("--json", action="store_true")
    clusters.set_defaults(handler=_clusters)
    return parser


def _existing(db: Path) -> Path:
    if not db.is_file():
        raise NotFoundError(f"no database at {db}; pass --db or run `sage-agent run` first")
    return db


# run / eval


def _run(args: argparse.Namespace) -> int:
    from sage_agent.data import read_tasks
    from sage_agent.decompose import LLMDecomposer, annotation_decomposer, socratic_decomposer

    resume = getattr(args, "resume", False)
    agent = SageAgent(args.db, args.model, substitute=args.substitute)
    if args.decompose == "annotations":
        agent.configure(decomposer=annotation_decomposer)
    elif args.decompose == "socratic":
        agent.configure(decomposer=socratic_decomposer)
    else:
        agent.configure(decomposer=LLMDecomposer(agent.model))
    run_id, options = (
        None,
        {
            "data": str(args.data) if args.data else None,
            "limit": args.limit,
            "strict": args.strict,
            "buffer_size": getattr(args, "buffer_size", None),
            "min_cluster": getattr(args, "min_cluster", None),
        },
    )
    if resume:
        unfinished = agent.unfinished_run()
        if unfinished is None:
            raise RunError(f"{args.db} has no unfinished run to resume")
        run_id, options = unfinished["id"], json.loads(unfinished["options"])
    _apply_sizes(agent, options.get("buffer_size"), options.get("min_cluster"))
    if options["data"] is None:
        raise DataError("--data is required")
    tasks = read_tasks(options["data"], limit=options["limit"], strict=options["strict"])
    if not tasks:
        raise DataError(f"{options['data']} holds no tasks")
    train = args.command == "run"
    if train and args.budget is not None:
        if not args.budget > 0:
            raise InvalidInput(f"--budget must be a positive number of seconds, not {args.budget}")
        agent.configure(budget_seconds=args.budget)
    summary = run_with_progress(
        agent,
        tasks,
        train=train,
        route=not getattr(args, "no_adapters", False),
        options=options,
        run_id=run_id,
        quiet=args.json,
    )
    _print_summary(summary, args.json)
    return 0


def _apply_sizes(agent: SageAgent, buffer_size: int | None, min_cluster: int | None) -> None:
    """--buffer-size and --min-cluster (a resumed run keeps the ones it started with)."""
    try:
        if buffer_size is not None:
            agent.buffer.config = replace(agent.buffer.config, buffer_size=buffer_size)
        if min_cluster is not None:
            agent.store.config = replace(agent.store.config, min_train_samples=min_cluster)
    except ConfigError as error:
        raise RunError(f"--buffer-size / --min-cluster: {error}") from error


def _print_summary(summary: RunSummary, as_json: bool) -> None:
    data = asdict(summary)
    if as_json:
        print(json.dumps(data))
        return
    from tabulate import tabulate

    shown = {k: v for k, v in data.items() if k not in ("threads", "errors")}
    print(tabulate(shown.items(), headers=("metric", "value"), floatfmt=".3f"))
    for error in data["errors"]:
        print(f"error: {error}")
    if data["threads"]:
        print(f"threads: {len(data['threads'])}, latest {data['threads'][-1]}")


# trace


def _trace(args: argparse.Namespace) -> int:
    from sage_agent.trace import latest_thread, render_html, render_mermaid, render_table, trace

    agent = SageAgent(_existing(args.db))
    if args.format == "mermaid":
        text = render_mermaid(agent)
    else:
        data = trace(agent, args.thread or latest_thread(agent))
        if args.format == "json":
            text = json.dumps(data, indent=1, default=str)
        elif args.format == "html":
            text = render_html(agent, data)
        else:
            text = render_table(data)
    if args.out is None and args.format == "html":
        args.out = Path(f"trace-{data['thread'].replace(':', '-')}.html")
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        print(args.out)
    else:
        print(text)
    return 0


# adapters / clusters


def _adapters(args: argparse.Namespace) -> int:
    db = _existing(args.db)
    registry = AdapterRegistry(db, adapter_root(db))
    if args.action == "list":
        records = registry.adapters(status=None)
        if args.json:
            print(json.dumps([asdict(r) for r in records]))
            return 0
        from tabulate import tabulate

        columns = ("id", "cluster_id", "tag", "position", "val_em", "base_val_em", "uses")
        columns += ("wins", "status")
        rows = [[getattr(r, c) for c in columns] for r in records]
        print(tabulate(rows, headers=columns, floatfmt=".2f"))
        return 0
    if not args.id:
        raise InvalidInput(f"adapters {args.action} needs an adapter id")
    if args.action == "show":
        print(json.dumps(asdict(registry.get(args.id)), indent=1))
    else:
        registry.remove(args.id)
        print(f"removed adapter {args.id}")
    return 0


def _clusters(args: argparse.Namespace) -> int:
    buffer = TriggerBuffer(_existing(args.db))
    clusters = buffer.clusters(with_samples=False)
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
        print(json.dumps({"clusters": rows, "buffered": len(buffer.buffered())}))
        return 0
    from tabulate import tabulate

    print(tabulate([list(r.values()) for r in rows], headers=list(rows[0]) if rows else ()))
    print(f"{len(buffer.buffered())} samples waiting in the buffer")
    return 0


# demo


def _demo(args: argparse.Namespace) -> int:
    from sage_agent.demo import run_demo

    return run_demo(problems=args.problems, seed=args.seed, db=args.db)


if __name__ == "__main__":
    sys.exit(main())
