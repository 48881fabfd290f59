"""Every benchmark script imports: its names are those of the library today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(FOLDER.glob("bench_*.py")), ids=lambda p: p.stem)
def test_benchmark_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FOLDER))  # the scripts import their common.py
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # main() runs only under __main__
    assert callable(module.main)


def test_bench_adapt_counts_right_steps_per_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FOLDER))
    spec = importlib.util.spec_from_file_location("_bench_adapt_table", FOLDER / "bench_adapt.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)

    def seed(number: int, base: list[bool], sage: list[bool]) -> object:
        methods = {
            name: bench.MethodResult(name, right, [""] * len(right))
            for name, right in (("Base", base), ("SAGE", sage))
        }
        return bench.SeedResult(number, 0, 0, [""] * len(base), methods=methods)

    results = [
        seed(0, [True, False, False], [True, True, False]),
        seed(1, [False, True], [True, True]),
    ]
    tags = [["*", "+", "*/"], ["*", ""]]
    table = bench.operator_table(results, tags)
    assert table[0] == "| operator | steps | Base | SAGE |"
    assert "| `*` | 2 | 1 | 2 |" in table
    assert "| `+` | 1 | 0 | 1 |" in table
    assert "| `other` | 2 | 1 | 1 |" in table  # "*/" and no operator pooled
    assert not any(row.startswith("| `-`") for row in table)  # no such step
