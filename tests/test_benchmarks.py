"""Every benchmark script imports: its names are those of the library today; and the
parts of bench_adapt that make its tables."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from langchain_core.messages import AIMessage

from sage_agent.store import AdaptationPolicy

FOLDER = Path(__file__).parent.parent / "benchmarks"


def load_script(script: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(FOLDER))  # the scripts import their common.py
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # main() runs only under __main__
    return module


def load_adapt(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """bench_adapt's methods and report, as one namespace."""
    methods = load_script(FOLDER / "adapt_methods.py", monkeypatch)
    report = load_script(FOLDER / "adapt_report.py", monkeypatch)
    return SimpleNamespace(**{**vars(report), **vars(methods)})


@pytest.mark.parametrize("script", sorted(FOLDER.glob("bench_*.py")), ids=lambda p: p.stem)
def test_benchmark_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert callable(load_script(script, monkeypatch).main)


def test_bench_adapt_counts_right_steps_per_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_adapt(monkeypatch)

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


def test_bench_adapt_routes_to_more_adapters_than_stay_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A method routing to more adapters than the store keeps loaded answers every step
    with its own adapter, and the result keeps the method's name."""
    bench = load_adapt(monkeypatch)

    class Model:  # answers with the name of the adapter in use; one adapter loaded at most
        def __init__(self) -> None:
            self.loaded: list[str] = []
            self.active: str | None = None

        def bind(self, **_: object) -> Model:
            return self

        @contextlib.contextmanager
        def using_adapter(self, name: str | None):  # type: ignore[no-untyped-def]
            assert name is None or name in self.loaded, f"{name} was evicted"
            self.active = name
            yield

        def batch(self, prompts: list[str]) -> list[AIMessage]:
            return [AIMessage(str(self.active)) for _ in prompts]

    model = Model()

    class Store:
        def __init__(self) -> None:
            self.model = model
            self.registry = SimpleNamespace(trials=lambda: [])
            self.config = SimpleNamespace(router=SimpleNamespace(route_below=-1.0, contest=True))
            self.policy = AdaptationPolicy(self)  # type: ignore[arg-type]

        def route(self, prompt: str, tag: str | None = None, **_: object) -> list[object]:
            return [SimpleNamespace(id=prompt, route_all=True)]

        def surer(self, adapted: AIMessage, _base: AIMessage, _tag: str | None = None) -> bool:
            return adapted.text != "loaded-c"  # the contest gives c's step back

        def load(self, adapter_id: str) -> str:
            model.loaded = [f"loaded-{adapter_id}"]  # loading one evicts the others
            return model.loaded[0]

        def unsure(self, _: AIMessage, _tag: str | None = None) -> bool:
            return True

        def adapters(self) -> list[str]:
            return ["a", "b", "c"]

        def unload(self) -> None:
            model.loaded = []

    atoms = [bench.Atom(p, "1+1", f"loaded-{p}", "+") for p in ("a", "b", "c", "a")]
    result = bench.routed_answers(
        "method", Store(), atoms, [AIMessage("0")] * 4, by_tag=True, gate=True
    )
    assert result.name == "method"
    assert result.answers == ["loaded-a", "loaded-b", "0", "loaded-a"]
    assert result.routed == 4


def test_bench_adapt_writes_seconds_whole_and_rates_to_three_decimals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_adapt(monkeypatch)
    assert [bench._cell(v) for v in (1070.4, 445.07, 0.48348, 7, None)] == [
        "1070",
        "445",
        "0.483",
        "7",
        "None",
    ]


def test_bench_adapt_counts_what_each_method_did_with_the_base_models_wrong_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_adapt(monkeypatch)
    base = bench.MethodResult("Base", [True, True, False, False, False], ["1", "2", "9", "9", "9"])
    # keeps step 0, loses step 1, leaves step 2 as the base answered, changes step 3 to
    # another wrong answer and fixes step 4
    sage = bench.MethodResult("SAGE", [True, False, False, False, True], ["1", "5", "9", "8", "3"])
    result = bench.SeedResult(0, 0, 0, [""] * 5, methods={"Base": base, "SAGE": sage})
    table = bench.change_table([result, result])
    assert table[2] == "| SAGE | 6 | 2 | 2 | 2 | 4 | 2 |"
    assert len(table) == 3  # one row per method besides the base model


def test_bench_adapt_shows_a_dash_where_the_base_model_got_no_step_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_adapt(monkeypatch)
    base = bench.MethodResult("Base", [False, False], ["1", "2"])
    sage = bench.MethodResult("SAGE", [True, False], ["7", "2"])
    result = bench.SeedResult(0, 2, 0, ["7", "3"], methods={"Base": base, "SAGE": sage})
    assert "| 1.000 | - | 0.500 |" in bench.atomic_table([result])[3]  # answered, kept, fixed


def test_bench_adapt_reports_a_label_family_as_the_papers_table_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_adapt(monkeypatch)
    references = ["yes", "no", "maybe", "yes"]
    base = bench.MethodResult("Base", [True, False, False, True], ["yes", "yes", "yes", "yes"])
    sage = bench.MethodResult("SAGE", [True, True, False, True], ["yes", "no", "no", "yes"])
    result = bench.SeedResult(
        0, 4, 2, references, methods={"Base": base, "SAGE": sage}, family="pubmedqa"
    )
    table = bench.atomic_table([result])
    assert table[0].startswith("| method | accuracy | macro P | macro R | macro F1 |")
    # the base model answers the majority label: accuracy 0.5, macro F1 (2/3 + 0 + 0) / 3
    assert table[2].startswith("| Base | 0.500 | 0.167 | 0.333 | 0.222 | 1.000 |")
    assert table[3].startswith("| SAGE | 0.750 |")
    confusion = bench.confusion_tables([result])
    assert "| yes | 2 | 0 | 0 | 0 |" in confusion and "| no | 0 | 1 | 0 | 0 |" in confusion
    assert bench.atoms_of([{"id": "p", **_pubmedqa()}])[0].family == "pubmedqa"


def _pubmedqa() -> dict:
    return {"question": "Q?", "contexts": ["C."], "final_decision": "maybe"}
