"""The sage-agent command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sage-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the embedded default end to end, offline")
    demo.add_argument("--problems", type=int, default=12, help="generated problems (default 12)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the problem generator")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from sage_agent.demo import run_demo

        return run_demo(problems=args.problems, seed=args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
