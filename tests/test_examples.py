"""The examples run as a user runs them, on the embedded model (all but the GPU one),
in one process so that torch and the models are imported once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
NOT_HERE = {"hub_model_on_a_gpu.py"}  # needs a GPU and a cached hub model
PRINTS = {  # what each example must have printed
    "agent_with_middleware.py": "failures waiting in the buffer",
    "custom_decomposer.py": "  answer: ",
    "graph_as_subgraph.py": " -> '",
    "quickstart.py": "mean logits margin:",
    "read_a_trace.py": "replayed from",
    "sage_graph.py": "step EM",
}

DRIVER = """
import runpy, sys, traceback

for path in sys.argv[1:]:
    sys.argv = [path]
    print(f"=== {path}", flush=True)
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            print(f"!!! {path} exited {stop.code}", flush=True)
    except Exception:
        traceback.print_exc(file=sys.stdout)
        print(f"!!! {path} failed", flush=True)
"""


@pytest.mark.embedded
@pytest.mark.system
def test_every_example_runs(tmp_path: Path) -> None:
    scripts = sorted(p for p in EXAMPLES.glob("*.py") if p.name not in NOT_HERE)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *map(str, scripts)],
        cwd=tmp_path,  # the examples' databases land here
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = done.stdout
    assert done.returncode == 0 and "!!!" not in out, out[-4000:] + done.stderr[-2000:]
    sections = {s.split("\n", 1)[0]: s for s in out.split("=== ")[1:]}
    assert sorted(Path(name).name for name in sections) == sorted(p.name for p in scripts)
    assert set(PRINTS) == {p.name for p in scripts}  # every example has its check
    for name, section in sections.items():
        assert PRINTS[Path(name).name] in section, section[-2000:]
