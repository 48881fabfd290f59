"""The sage-agent command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sage-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="the embedded default end to end, offline")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from sage_agent.demo import run_demo

        return run_demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
