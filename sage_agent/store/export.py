"""Portable adapters: a registered adapter as a plain peft folder for other tools.

The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` as peft writes
them, with ``base_model_name_or_path`` set to the hub id of the base model (the embedded
model's GGUF is a quantized SmolLM2-135M-Instruct), and a README.md saying what the
adapter was trained on, its figures, and which serving limits it meets.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sage_agent.embedded import EMBEDDED_CHAT_HUB_ID, EMBEDDED_CHAT_MODEL
from sage_agent.errors import CorruptAdapter, InvalidInput
from sage_agent.store.registry import AdapterRecord

VLLM_MAX_LORA_RANK = 16
"""vLLM's default ``max_lora_rank``: a larger rank needs the server started with more."""

FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_adapter(record: AdapterRecord, to: str | Path) -> Path:
    """Write ``record`` to the new or empty folder ``to`` (see the module docstring). A
    broken adapter, or one whose files are gone, is refused (CorruptAdapter); the folder
    is written beside ``to`` and renamed into place, so a failed export leaves nothing."""
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"{target} exists and is not an empty folder; pick another --to")
    if record.status != "ready":
        raise CorruptAdapter(f"adapter {record.id} is {record.status}; it is not exported")
    source = Path(record.path)
    missing = [name for name in FILES if not (source / name).is_file()]
    if missing:
        raise CorruptAdapter(
            f"adapter {record.id}'s folder {source} lacks {', '.join(missing)}; not exported"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in FILES:
            shutil.copyfile(source / name, partial / name)
        config = json.loads((partial / "adapter_config.json").read_text())
        base = config.get("base_model_name_or_path") or ""
        if base == EMBEDDED_CHAT_MODEL:
            config["base_model_name_or_path"] = EMBEDDED_CHAT_HUB_ID
        (partial / "adapter_config.json").write_text(json.dumps(config, indent=2))
        (partial / "README.md").write_text(_readme(record, config, base))
        if target.exists():
            target.rmdir()  # empty, checked above
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def serving_limits(config: dict) -> list[str]:
    """What a LoRA server asks of an adapter, and whether this one meets it."""
    rank = int(config.get("r", 0))
    return [
        f"rank {rank}: "
        + ("within" if rank <= VLLM_MAX_LORA_RANK else "above")
        + f" vLLM's default max_lora_rank of {VLLM_MAX_LORA_RANK}",
        "modules_to_save: " + ("none" if not config.get("modules_to_save") else "present"),
        "DoRA: " + ("no" if not config.get("use_dora") else "yes (not served by vLLM)"),
    ]


def _readme(record: AdapterRecord, config: dict, base: str) -> str:
    weights = (
        "the embedded SmolLM2-135M-Instruct, a Q4_1 GGUF dequantized by transformers; "
        "the hub model's own weights differ from it by that quantization"
        if base == EMBEDDED_CHAT_MODEL
        else f"`{base}`"
    )
    return "\n".join(
        [
            f"# LoRA adapter {record.id}",
            "",
            f"Trained by sage-agent on {weights}, for failures of cluster "
            f"{record.cluster_id} (structure tag `{record.tag}`): {record.samples} training "
            f"pairs, {record.train_seconds:.0f} s.",
            "",
            f"- validation exact match: {record.val_em:.1%} (base model {record.base_val_em:.1%})",
            "- canary exact match: "
            + ("not measured" if record.canary_em is None else f"{record.canary_em:.1%}"),
            "- routed: "
            + (
                "every step routed to it"
                if record.route_all
                else "the steps the base model is unsure of (log-probability of its number)"
            ),
            f"- target modules: {', '.join(config.get('target_modules') or [])}",
            "",
            "Serving limits:",
            "",
            *[f"- {line}" for line in serving_limits(config)],
            "",
            "Load it with peft: `PeftModel.from_pretrained(base_model, this_folder)`.",
            "",
        ]
    )
