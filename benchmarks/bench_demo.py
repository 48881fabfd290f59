"""The demo as a user runs it: ``sage-agent demo`` in a fresh folder, its summary kept.

    python benchmarks/bench_demo.py [--seed 0]

Runs the real command (the embedded model, its own database) and writes the lines it
prints after the progress bars, with the wall time, to benchmarks/results/demo.md. The
README quotes the demo's figures from there.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import results_header

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY_START = re.compile(r"^\d+ problems, \d+ steps")  # "25 problems, 62 steps in ..."


def summary_lines(stdout: str) -> list[str]:
    """The demo's summary: from its "N problems, M steps" line on, without the paths of
    the folder it ran in."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if SUMMARY_START.match(line)), None)
    if start is None:
        raise SystemExit("the demo printed no summary:\n" + stdout[-2000:])
    return [line for line in lines[start:] if not line.startswith(("run report:", "  a thread"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "demo.md")
    args = parser.parse_args()
    command = [sys.executable, "-m", "sage_agent.app.cli", "demo", "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "--db", str(Path(folder) / "sage-demo.db")],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = results_header(
        "The demo",
        f"`sage-agent demo --seed {args.seed}` on the embedded SmolLM2-135M, "
        f"{seconds:.0f} s wall time with the model's loading.",
    )
    lines += ["What it printed after its progress bars:", "", "```", *summary_lines(done.stdout)]
    lines += ["```", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
