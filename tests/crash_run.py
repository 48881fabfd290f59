"""``sage-agent`` in a process that SIGKILLs itself at a chosen point (tests/test_kills.py).

    python tests/crash_run.py POINT sage-agent-arguments...

The run uses the tiny llama the tests build, bag-of-words embeddings and the store
settings under which it learns (tests/test_graph.py's NINES). POINT is one of KILL_POINTS
or "none"; the process kills itself the first time it gets there.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))

import sage_agent.buffer.buffer as buffer_module
import sage_agent.context
import sage_agent.graphs.sage as graph_module
import sage_agent.store.registry as registry_module
import sage_agent.store.store as store_module
import sage_agent.training.adapter_files as adapter_files_module
from sage_agent.app.cli import main
from tests.support.tiny import NINES, BagOfWordsEmbeddings

KILL_POINTS = {
    "inside-adapter-save": (adapter_files_module, "save_file", "after"),
    "after-rename": (registry_module, "_fsync", "after-folder"),
    "after-registry-insert": (registry_module.AdapterRegistry, "log_trial", "before"),
    "before-mark-trained": (buffer_module, "mark_trained", "before"),
    "inside-clustering": (buffer_module, "hdbscan_labels", "before"),
    "between-graph-steps": (graph_module, "advance", "third-call"),
}


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    owner, name, when = KILL_POINTS[point]
    real: Callable[..., Any] = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(real)  # LangGraph reads a node's signature to pass it the runtime
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if when == "before" or (when == "third-call" and calls["n"] == 3):
            _die()
        result = real(*args, **kwargs)
        # _fsync of the adapter root comes right after the rename, inside the transaction
        if when == "after" or (when == "after-folder" and Path(args[0]).is_dir()):
            _die()
        return result

    setattr(owner, name, wrapper)


def use_the_tiny_setup() -> None:
    """Bag-of-words embeddings and the store settings the tiny llama learns under."""
    sage_agent.context.LazyDefaultEmbeddings = BagOfWordsEmbeddings
    store_module.StoreConfig = lambda: NINES


if __name__ == "__main__":
    point, argv = sys.argv[1], sys.argv[2:]
    use_the_tiny_setup()
    if point != "none":
        _install(point)
    sys.exit(main(argv))
