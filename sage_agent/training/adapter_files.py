"""Adapters in peft's format on disk: writing a trained one, and starting a run from one.

A folder holds adapter_config.json and adapter_model.safetensors, as peft's
``save_pretrained`` writes them, so that ``PeftModel.from_pretrained`` and transformers'
``load_adapter`` read it as well as ``ChatSage.load_adapter``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from sage_agent.chat import ChatSage
from sage_agent.errors import AdapterError, NotFoundError


def start_adapter(chat: ChatSage, name: str, config: LoraConfig, init_from: str | None) -> None:
    """Add adapter ``name`` to train: fresh from ``config``, or with the weights saved at
    ``init_from``, which must have ``config``'s shape (AdapterError naming what differs;
    a missing or corrupt folder is ``load_adapter``'s AdapterError)."""
    if init_from is None:
        chat.add_adapter(name, config)
        return
    chat.load_adapter(init_from, name)
    found = chat.hf_model.peft_config[name]
    differs = [
        f"{what} {theirs} (the run's {ours})"
        for what, theirs, ours in (
            ("rank", found.r, config.r),
            ("alpha", found.lora_alpha, config.lora_alpha),
            ("modules", sorted(found.target_modules), sorted(config.target_modules)),
            ("layers", found.layers_to_transform, config.layers_to_transform),
        )
        if theirs != ours
    ]
    if differs:
        chat.delete_adapter(name)
        raise AdapterError(f"the adapter at {init_from} has {', '.join(differs)}")


_PEFT_PREFIX = "base_model.model."


def save_adapter(chat: ChatSage, name: str, folder: str | Path) -> Path:
    """Write adapter ``name`` in peft's format (adapter_config.json and
    adapter_model.safetensors), loadable by ``ChatSage.load_adapter`` and by peft."""
    if name not in chat.adapters:
        raise NotFoundError(f"no adapter named {name!r} is loaded")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = chat.hf_model
    with warnings.catch_warnings():
        # peft looks for the base model's config.json to check the vocabulary; a GGUF
        # folder has none, and LoRA leaves the vocabulary alone anyway.
        warnings.filterwarnings("ignore", "Could not find a config file", UserWarning)
        weights = get_peft_model_state_dict(model, adapter_name=name)
    # peft's own key names ("base_model.model." + the module path), so that plain
    # PeftModel.from_pretrained reads the file too (transformers reads either form).
    save_file(
        {
            _PEFT_PREFIX + k.removeprefix(_PEFT_PREFIX): v.detach().contiguous()
            for k, v in weights.items()
        },
        folder / "adapter_model.safetensors",
    )
    config = model.peft_config[name]
    config.save_pretrained(str(folder))
    # peft reads base_model_name_or_path only as a hint; record the chat model's id.
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = chat.model_name
    path.write_text(json.dumps(data, indent=2))
    return folder
