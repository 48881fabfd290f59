"""The package's shape: graphs/ and tools/ at the top of the repository installed as
subpackages, a small package root, no import loops, modules small enough to read in one
sitting, and every public error under SageError."""

from __future__ import annotations

import ast
import inspect
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sage_agent
import sage_agent.graphs
import sage_agent.tools
from sage_agent.errors import SageError

PACKAGE = Path(sage_agent.__file__).parent
REPO = PACKAGE.parent
# Where each installed package's source lies: graphs/ and tools/ sit beside sage_agent/.
SOURCES = {
    "sage_agent": PACKAGE,
    "sage_agent.graphs": Path(sage_agent.graphs.__file__).parent,
    "sage_agent.tools": Path(sage_agent.tools.__file__).parent,
}
MAX_LINES = 450
MAX_ROOT_MODULES = 10


def _sources() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code (imports inside
    functions count: they are loops all the same), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    paths = _sources()
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_loops() -> None:
    graph = _graph()
    assert "sage_agent.context" in graph["sage_agent.graphs.sage"]  # the walk sees imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_loop_finder_finds_a_loop() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_modules_are_small_enough_to_read() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _sources().items()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_graphs_and_tools_are_top_level_folders_and_the_root_is_small() -> None:
    assert SOURCES["sage_agent.graphs"] == REPO / "graphs"
    assert SOURCES["sage_agent.tools"] == REPO / "tools"
    assert not (PACKAGE / "graphs").exists() and not (PACKAGE / "tools").exists()
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(root) <= MAX_ROOT_MODULES, root


def test_old_module_paths_are_the_moved_modules() -> None:
    from sage_agent.data import read_tasks
    from sage_agent.tasks import data

    assert read_tasks is data.read_tasks
    for old, new in sage_agent.MOVED_MODULES.items():
        assert __import__(old, fromlist=["_"]) is sys.modules[new]


@pytest.mark.system
def test_a_wheel_installs_graphs_and_tools_as_subpackages(tmp_path: Path) -> None:
    """``pip install .`` (a wheel) puts graphs/ and tools/ inside sage_agent, and nothing
    named graphs or tools at the top of site-packages; the module list in pyproject is
    complete (every module of the tree is in the wheel). The editable install this suite
    runs on is the other mode: SOURCES above resolved through it."""
    source = tmp_path / "source"  # setuptools builds in the source tree: not in the clone
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "sage_agent", "graphs", "tools"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("sage_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sage_agent/graphs/sage.py" in names and "sage_agent/tools/lora_store.py" in names
    assert not any(n.startswith(("graphs/", "tools/")) for n in names)
    wanted = {n.replace(".", "/") for n in _sources()}
    packaged = {n.removesuffix(".py").removesuffix("/__init__") for n in names if n.endswith(".py")}
    assert wanted <= packaged, sorted(wanted - packaged)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    probe = (
        "import sage_agent.graphs.sage, sage_agent.tools, sage_agent.graphs.studio; "
        "print(sage_agent.graphs.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); " + probe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(target / "sage_agent" / "graphs" / "__init__.py")


def test_every_exported_error_is_a_sage_error() -> None:
    exported = [getattr(sage_agent, name) for name in sage_agent.__all__]
    errors = [e for e in exported if inspect.isclass(e) and issubclass(e, BaseException)]
    assert len(errors) >= 15
    assert [e.__name__ for e in errors if not issubclass(e, SageError)] == []
