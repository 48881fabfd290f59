"""Loading a causal LM and its tokenizer: the embedded GGUF, a .gguf file, a local folder
or a model in the local Hugging Face cache (never a download)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sage_agent.embedded import EMBEDDED_CHAT_MODEL, smollm2_gguf
from sage_agent.errors import UnknownModelError

# A plain ChatML template for models that ship none (base models, tiny test models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_causal_lm(model_name: str, dtype: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_name == EMBEDDED_CHAT_MODEL:
        location = smollm2_gguf()
        source, extra = str(location.folder), {"gguf_file": location.gguf_file}
    elif model_name.endswith(".gguf"):
        path = Path(model_name)
        if not path.is_file():
            raise UnknownModelError(f"no GGUF file at {path}")
        source, extra = str(path.parent), {"gguf_file": path.name}
    else:
        source, extra = model_name, {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **extra)
    except OSError as error:
        if Path(source).exists():
            raise UnknownModelError(f"cannot load a causal LM from {source}: {error}") from error
        raise UnknownModelError(
            f"unknown model {model_name!r}: not a local folder, not a .gguf file, and not in "
            f"the local Hugging Face cache (this machine may be offline). Pass a local path, "
            f"or use the embedded default {EMBEDDED_CHAT_MODEL!r}."
        ) from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    model.to(device).eval()
    return model, tokenizer


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence peft's notes on what the design does on purpose: several adapters on one
    model, and deleting the active one (ChatSage chooses the next itself)."""
    # transformers' load report names the other loaded adapters' keys as "missing" from each
    # adapter file; ChatSage.load_adapter checks the adapter's own keys instead.
    report = logging.getLogger("transformers.integrations.peft")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
            warnings.filterwarnings("ignore", "Adapter .* was active", UserWarning)
            yield
    finally:
        report.setLevel(level)
