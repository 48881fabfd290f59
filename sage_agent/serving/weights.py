"""The base model as a folder vLLM serves: a local Hugging Face folder as it is; the
embedded GGUF (or any ``.gguf`` file) dequantized once into float32 safetensors.

transformers refuses ``save_pretrained`` on a model loaded from GGUF, so the weights are
written with safetensors directly, the config without its GGUF ``quantization_config``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sage_agent.embedded import EMBEDDED_CHAT_MODEL


def default_cache() -> Path:
    """Where written folders go: ``$SAGE_CACHE``, else ``$XDG_CACHE_HOME/sage-agent``."""
    if os.environ.get("SAGE_CACHE"):
        return Path(os.environ["SAGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sage-agent"


def served_weights(model_name: str = EMBEDDED_CHAT_MODEL, cache: Path | None = None) -> Path:
    """The folder vLLM loads for ChatSage's ``model_name``; a GGUF model's is written
    under ``cache`` on first use (about 0.5 GB for the embedded model) and reused."""
    if model_name != EMBEDDED_CHAT_MODEL and not model_name.endswith(".gguf"):
        return Path(model_name)
    folder = (cache or default_cache()) / "served" / Path(model_name).name.removesuffix(".gguf")
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed into place: a killed export leaves no half folder.
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=folder.parent))
    try:
        _write(model_name, staging)
        try:
            staging.rename(folder)
        except OSError:  # another process wrote it meanwhile
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write(model_name: str, folder: Path) -> None:
    from safetensors.torch import save_file

    from sage_agent.chat.loading import load_causal_lm

    model, tokenizer = load_causal_lm(model_name, "float32", "cpu")
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # the embedding matrix, stored once
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
