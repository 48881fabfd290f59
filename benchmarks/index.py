"""Writes docs/benchmarks.md from the benchmarks themselves: each script's docstring says
what it measures, and its results file gives the command that wrote it and its current
table, so the page is never typed by hand.

    python benchmarks/index.py          # rewrite docs/benchmarks.md
    python benchmarks/index.py --check  # exit 1 if the page is out of date
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "benchmarks.md"
MAX_ROWS = 12
INTRO = """# Benchmarks

Each benchmark is a script in `benchmarks/` that prints its figures and writes them to a
results file in `benchmarks/results/`, whose first lines give the command that wrote it and
the machine (cores, CPU model and the bf16 / AMX features timings depend on). Timings are
comparable only between runs on the same kind of CPU. Figures in the README and the docs
are quoted from these files. This page is written by `python benchmarks/index.py` from the
scripts' docstrings and the results files (a test checks that it is current); what changed
between runs, and what was measured on the way, is in [CHANGELOG.md](../CHANGELOG.md).
"""


def results_file(script: Path) -> Path:
    return HERE / "results" / f"{script.stem.removeprefix('bench_')}.md"


def summary(script: Path) -> str:
    """The first paragraph of the script's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def excerpt(results: Path) -> list[str]:
    """The results file's command and its first table (or list), at most MAX_ROWS rows."""
    lines = results.read_text(encoding="utf-8").splitlines()
    command = [line for line in lines if line.startswith("Command")][:1]
    indented = [line.strip() for line in lines if line.startswith("    python")]
    if indented:  # the commands as a block of their own
        command += ["", "```", *indented, "```"]
    start = next((i for i, line in enumerate(lines) if line.startswith(("|", "- **"))), len(lines))
    block = []
    for line in lines[start:]:
        if not line.startswith(("|", "- ")):
            break
        block.append(line)
    shown = block[: MAX_ROWS + 2]
    if len(block) > len(shown):
        shown.append(f"\n({len(block) - len(shown)} more rows in the file)")
    return [*command, "", *shown]


def page() -> str:
    parts = [INTRO]
    for script in sorted(HERE.glob("bench_*.py")):
        results = results_file(script)
        name = script.stem.removeprefix("bench_")
        parts += [f"## {name}", "", summary(script), ""]
        if not results.exists():
            parts += [f"No results yet: run `python benchmarks/{script.name} --help`.", ""]
            continue
        link = f"[benchmarks/results/{results.name}](../benchmarks/results/{results.name})"
        parts += [f"Results: {link}.", "", *excerpt(results), ""]
        others = sorted((HERE / "results").glob(f"{name}-*.md"))
        if others:  # the same script run on other data or settings
            links = [f"[{o.name}](../benchmarks/results/{o.name})" for o in others]
            parts += [f"Other runs: {', '.join(links)}.", ""]
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args()
    text = page()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            sys.exit(f"{PAGE} is out of date: run python benchmarks/index.py")
        return
    PAGE.write_text(text, encoding="utf-8")
    print(f"written to {PAGE}")


if __name__ == "__main__":
    main()
