"""The sage-agent command line: a thin layer over SageAgent, the store and the buffer.

Errors the user can fix (every ``SageError``: a missing file, an unknown model or thread,
a locked or foreign database) print one line to stderr and exit with 1; usage errors exit
with 2. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sage_agent.app import listing
from sage_agent.app.serve import add_serve_parser
from sage_agent.buffer.config import BufferConfig
from sage_agent.database import existing_database, reading
from sage_agent.errors import (
    ConfigError,
    DataError,
    InvalidInput,
    RunError,
    SageError,
)
from sage_agent.runs import unfinished_run
from sage_agent.store.config import StoreConfig

if TYPE_CHECKING:
    from sage_agent.agent import SageAgent


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
    _add_engine(demo)
    demo.set_defaults(handler=_demo)

    for name, text in (
        ("run", "stream tasks through the graph, training adapters as clusters get ready"),
        ("eval", "answer tasks with routing to existing adapters; trains nothing"),
    ):
        command = sub.add_parser(name, help=text)
        # Run options default to None, so that a resumed run can tell what was given.
        command.add_argument("--data", type=Path, help="JSONL task file")
        command.add_argument("--limit", type=int, default=None, help="first N tasks only")
        command.add_argument("--db", type=Path, default=Path("sage.db"))
        command.add_argument("--model", default=None, help="hub id or local path")
        command.add_argument(
            "--format",
            default=None,
            help="task family of the file: gsm8k, pubmedqa, a BIG-Bench Hard task "
            '(navigate, word_sorting, ...) or text ({"input", "target"}); default: '
            "detected from the first line's fields",
        )
        command.add_argument(
            "--decompose",
            choices=("socratic", "annotations", "llm"),
            default=None,
            help="how tasks become steps (default socratic)",
        )
        command.add_argument(
            "--substitute",
            choices=("references", "answers"),
            default=None,
            help="what later steps use: the references (score each step on its own, the "
            "default) or the model's own earlier answers",
        )
        command.add_argument(
            "--strict", action="store_true", default=None, help="stop at a malformed line"
        )
        command.add_argument("--json", action="store_true", help="one JSON object on stdout")
        _add_engine(command)
        command.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="tasks answered at once (default 8 with --engine, which batches them; "
            "1 in process)",
        )
        command.add_argument(
            "--resume",
            action="store_true",
            help="continue the latest unfinished run with the options it started with "
            "(refused if it is of the other kind, run or eval)",
        )
        command.add_argument(
            "--take-over",
            action="store_true",
            help="with --resume: take the run over even if its lease looks held (its "
            "process on another machine is gone, say)",
        )
        if name == "run":
            command.add_argument(
                "--budget",
                type=float,
                default=None,
                help=f"seconds of one search (default {RUN_OPTIONS['budget']:g}: short "
                "searches, so the run's adaptation time covers every operator's cluster)",
            )
            command.add_argument(
                "--adapt-seconds",
                type=float,
                default=None,
                help="seconds the whole run may spend training adapters, over all its "
                f"searches (default {RUN_OPTIONS['adapt_seconds']:g}); a search starts only "
                "with a minute left",
            )
            command.add_argument(
                "--buffer-size",
                type=int,
                default=None,
                help="failures a tag collects before its first clustering (the paper's T; "
                f"default {BufferConfig().buffer_size}: BufferConfig.buffer_size)",
            )
            command.add_argument(
                "--min-cluster",
                type=int,
                default=None,
                help="smallest cluster the LoRA Store trains on (default "
                f"{StoreConfig().min_train_samples}: StoreConfig.min_train_samples)",
            )
        else:
            command.add_argument(
                "--no-adapters", action="store_true", default=None, help="base model only"
            )
        command.set_defaults(handler=_run)

    add_serve_parser(sub)

    trace = sub.add_parser("trace", help="a thread step by step")
    trace.add_argument("thread", nargs="?", help="thread id (default: the latest)")
    trace.add_argument("--db", type=Path, default=Path("sage.db"))
    trace.add_argument(
        "--format",
        choices=("table", "json", "mermaid", "html"),
        default="table",
        help="html: a page with the graph drawn, every attempt and every checkpoint",
    )
    trace.add_argument("--out", type=Path, default=None, help="write to this file")
    trace.set_defaults(handler=_trace)

    report = sub.add_parser("report", help="a run's HTML report, with a page per thread")
    report.add_argument("run", nargs="?", help="run id (default: the latest)")
    report.add_argument("--db", type=Path, default=Path("sage.db"))
    report.add_argument(
        "--out", type=Path, default=None, help="the report's file (default report-RUN.html)"
    )
    report.set_defaults(handler=_report)

    adapters = sub.add_parser("adapters", help="the registered adapters")
    adapters.add_argument("action", choices=("list", "show", "rm", "export"))
    adapters.add_argument("id", nargs="?")
    adapters.add_argument("--to", type=Path, help="export: the new folder")
    adapters.add_argument("--db", type=Path, default=Path("sage.db"))
    adapters.add_argument("--json", action="store_true")
    adapters.set_defaults(handler=listing.adapters_command)

    clusters = sub.add_parser("clusters", help="the failure clusters")
    clusters.add_argument("action", choices=("list",))
    clusters.add_argument("--db", type=Path, default=Path("sage.db"))
    clusters.add_argument("--json", action="store_true")
    clusters.set_defaults(handler=listing.clusters_command)
    return parser


def _add_engine(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--engine",
        default=None,
        metavar="URL",
        help="answer through this vLLM server (sage-agent serve); training stays here",
    )


# run / eval


RUN_OPTIONS = {
    "data": None,
    "limit": None,
    "strict": False,
    "model": None,
    "format": None,
    "decompose": "socratic",
    "substitute": "references",
    "budget": 120.0,
    "adapt_seconds": 720.0,
    "buffer_size": None,
    "min_cluster": None,
    "no_adapters": False,
}
"""The options a run is stored with (and resumed with), and their defaults."""


def _run(args: argparse.Namespace) -> int:
    # The heavy stack (torch, transformers, LangChain) loads only for the commands that
    # answer or train, so `adapters list` and the like answer at once.
    from sage_agent.agent import SageAgent
    from sage_agent.app.progress import print_summary, run_with_progress
    from sage_agent.context import AdaptationBudget
    from sage_agent.tasks.data import read_tasks
    from sage_agent.tasks.decompose import LLMDecomposer, annotation_decomposer, socratic_decomposer
    from sage_agent.tasks.families import family_named

    given = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    given = {k: given.get(k) for k in RUN_OPTIONS}
    _check_options(given)
    if args.concurrency is not None and args.concurrency < 1:
        raise InvalidInput(f"--concurrency must be at least 1, not {args.concurrency}")
    run_id, options = None, {k: v if v is not None else RUN_OPTIONS[k] for k, v in given.items()}
    if args.resume:
        run_id, options = _resumed(args, given)
    if options["data"] is None:
        raise DataError("--data is required")
    family = family_named(options["format"]) if options["format"] else None
    tasks = read_tasks(
        options["data"], limit=options["limit"], strict=options["strict"], family=family
    )
    if not tasks:
        raise DataError(f"{options['data']} holds no tasks")
    agent = SageAgent(
        args.db, options["model"], substitute=options["substitute"], engine=args.engine
    )
    decomposers = {"annotations": annotation_decomposer, "socratic": socratic_decomposer}
    decomposer = decomposers.get(options["decompose"]) or LLMDecomposer(agent.model)
    agent.configure(
        decomposer=decomposer,
        budget_seconds=options["budget"],
        adaptation=AdaptationBudget(options["adapt_seconds"]),
    )
    _apply_sizes(agent, options["buffer_size"], options["min_cluster"])
    summary = run_with_progress(
        agent,
        tasks,
        train=args.command == "run",
        route=not options["no_adapters"],
        options={"mode": args.command, **options},
        run_id=run_id,
        take_over=args.take_over,
        quiet=args.json,
        concurrency=args.concurrency or (8 if args.engine else 1),
    )
    print_summary(summary, args.json)
    return 0


def _check_options(given: dict[str, Any]) -> None:
    """Numbers a run cannot use, refused before anything is opened."""
    if given["limit"] is not None and given["limit"] < 1:
        raise InvalidInput(f"--limit must be at least 1, not {given['limit']}")
    for name in ("budget", "adapt_seconds"):
        seconds = given[name]
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            flag = "--" + name.replace("_", "-")
            raise InvalidInput(f"{flag} must be a positive number of seconds, not {seconds}")


def _resumed(args: argparse.Namespace, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The latest unfinished run, which must be of ``args.command``'s kind, and the
    options it started with; an option given now that differs from them is refused."""
    from sage_agent.database import open_database

    unfinished = unfinished_run(open_database(existing_database(args.db)))
    if unfinished is None:
        raise RunError(f"{args.db} has no unfinished run to resume")
    if unfinished["mode"] != args.command:
        raise RunError(
            f"the unfinished run {unfinished['id']} is a {unfinished['mode']} run; resume "
            f"it with `sage-agent {unfinished['mode']} --resume`"
        )
    stored = json.loads(unfinished["options"] or "{}")
    for name, value in given.items():
        if name in stored and value is not None and value != stored[name]:
            flag = "--" + name.replace("_", "-")
            raise RunError(
                f"run {unfinished['id']} was started with {flag} {stored[name]}; resume "
                f"it without {flag} or with the same value"
            )
    # What the run did not record (a run of an older sage-agent) is taken as given now.
    options = {k: stored[k] if k in stored else given[k] for k in RUN_OPTIONS}
    return unfinished["id"], {k: RUN_OPTIONS[k] if v is None else v for k, v in options.items()}


def _apply_sizes(agent: SageAgent, buffer_size: int | None, min_cluster: int | None) -> None:
    """--buffer-size and --min-cluster (a resumed run keeps the ones it started with)."""
    try:
        if buffer_size is not None:
            agent.buffer.config = replace(agent.buffer.config, buffer_size=buffer_size)
        if min_cluster is not None:
            agent.store.config = replace(agent.store.config, min_train_samples=min_cluster)
    except ConfigError as error:
        raise RunError(f"--buffer-size / --min-cluster: {error}") from error


# trace


def _trace(args: argparse.Namespace) -> int:
    from sage_agent.agent import SageAgent
    from sage_agent.report import (
        latest_thread,
        read_thread,
        render_table,
        render_thread,
        thread_file,
    )

    with reading(existing_database(args.db)) as (db, adapters):
        agent = SageAgent(db, adapters=adapters)
        if args.format == "mermaid":
            text = agent.graph.get_graph().draw_mermaid()
        else:
            trace = read_thread(agent, args.thread or latest_thread(agent))
            if args.format == "json":
                text = json.dumps(asdict(trace), indent=1, default=str)
            elif args.format == "html":
                text = render_thread(agent, trace)
                args.out = args.out or Path(f"trace-{thread_file(trace.thread)}")
            else:
                text = render_table(trace)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        print(args.out)
    else:
        print(text)
    return 0


# report


def _report(args: argparse.Namespace) -> int:
    from sage_agent.agent import SageAgent
    from sage_agent.report import latest_run, write_run_report

    with reading(existing_database(args.db)) as (db, adapters):
        agent = SageAgent(db, adapters=adapters)
        run_id = args.run or latest_run(agent)
        out = (args.out or Path(f"report-{run_id}.html")).absolute()
        print(write_run_report(agent, run_id, out))
    return 0


# demo


def _demo(args: argparse.Namespace) -> int:
    from sage_agent.app.demo import run_demo

    return run_demo(problems=args.problems, seed=args.seed, db=args.db, engine=args.engine)


if __name__ == "__main__":
    sys.exit(main())
