"""The docs are a reference: the README is a front page, every percentage in the README
and docs/ is quoted from a results file a benchmark wrote, and the benchmarks page is the
one benchmarks/index.py generates from the benchmarks."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?%")
CODE = re.compile(r"`[^`\n]*`")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def test_every_percentage_in_the_docs_comes_from_a_results_file() -> None:
    results = " ".join(p.read_text(encoding="utf-8") for p in RESULTS.rglob("*.md"))
    unsourced = {
        page.name: missing
        for page in _pages()
        if (
            missing := [
                figure
                for figure in FIGURE.findall(CODE.sub("", page.read_text(encoding="utf-8")))
                if figure not in results
            ]
        )
    }
    assert unsourced == {}


def test_the_figure_check_sees_figures() -> None:
    assert FIGURE.findall(CODE.sub("", "from 34.4% to 63.5%, `50%` is code")) == ["34.4%", "63.5%"]


def test_the_benchmarks_page_is_generated_from_the_benchmarks() -> None:
    spec = importlib.util.spec_from_file_location("_index", ROOT / "benchmarks" / "index.py")
    assert spec is not None and spec.loader is not None
    index = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(index)
    assert index.PAGE.read_text(encoding="utf-8") == index.page(), (
        "docs/benchmarks.md is out of date: run python benchmarks/index.py"
    )
