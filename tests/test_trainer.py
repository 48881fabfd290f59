"""The LoRA trainer on the tiny llama: exact answer-only loss, what trains, determinism,
saving, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sage_agent import ChatSage
from sage_agent.records import TrainingPair
from sage_agent.trainer import (
    FrozenPrefix,
    LoRATrainConfig,
    _collate,
    _encode,
    _with_hidden,
    answer_loss,
    evaluate,
    save_adapter,
    train_lora,
)

PAIRS = [TrainingPair(f"Compute {a}+{b}.", str(a + b)) for a in range(6) for b in range(4)]
FAST = LoRATrainConfig(rank=4, epochs=3, learning_rate=1e-2, batch_size=8, bf16=False)


@pytest.fixture
def chat(tiny_model_dir: Path) -> ChatSage:
    return ChatSage(model=str(tiny_model_dir), max_tokens=4)


def test_answer_loss_equals_full_cross_entropy_on_answer_tokens(chat: ChatSage) -> None:
    batch = _collate(_encode(chat, PAIRS[:5]), chat)
    with torch.no_grad():
        loss, count = answer_loss(chat.hf_model, batch)
        logits = chat.hf_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    targets = batch["labels"][:, 1:]
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    answer_tokens = sum(
        len(chat.tokenizer(p.answer + "<|im_end|>")["input_ids"]) for p in PAIRS[:5]
    )
    assert count == answer_tokens


def test_prompt_tokens_are_masked(chat: ChatSage) -> None:
    ((ids, labels),) = _encode(chat, PAIRS[:1])
    learned = [t for t in labels if t != -100]
    assert chat.tokenizer.decode(learned) == "0<|im_end|>"
    assert len(ids) == len(labels) and labels[0] == -100


def test_training_changes_only_the_adapter_and_lowers_the_loss(chat: ChatSage) -> None:
    model = chat.hf_model
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = evaluate(chat, None, PAIRS).loss
    steps = []
    result = train_lora(chat, "a", PAIRS, FAST, progress=lambda s, t, loss: steps.append((s, t)))
    assert steps[-1] == (result.steps, result.steps) == (9, 9)  # 24 pairs / 8 x 3 epochs
    assert evaluate(chat, "a", PAIRS).loss < before
    for name, param in model.named_parameters():
        original = name.replace(".base_layer", "")  # peft wraps a targeted module
        if original in base:
            assert torch.equal(param, base[original]), f"{name} changed"
        else:
            assert ".a." in name  # only the new adapter's weights are new
    assert all(
        any(n.replace(".base_layer", "") == b for n, _ in model.named_parameters()) for b in base
    )
    assert not any(p.requires_grad for p in model.parameters())
    assert chat.active_adapter is None  # training does not leave the adapter active
    assert evaluate(chat, None, PAIRS).loss == pytest.approx(before)


def test_same_seed_same_adapter(chat: ChatSage, tmp_path: Path) -> None:
    weights = []
    for name, seed in (("s1", 3), ("s2", 3), ("s3", 4)):
        train_lora(chat, name, PAIRS, LoRATrainConfig(**{**FAST.__dict__, "seed": seed}))
        folder = save_adapter(chat, name, tmp_path / name)
        weights.append(load_file(folder / "adapter_model.safetensors"))
        chat.delete_adapter(name)
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_last_layers_only(chat: ChatSage, tmp_path: Path) -> None:
    config = LoRATrainConfig(**{**FAST.__dict__, "last_layers": 1, "target_modules": ("q_proj",)})
    train_lora(chat, "last", PAIRS, config)
    keys = load_file(save_adapter(chat, "last", tmp_path / "last") / "adapter_model.safetensors")
    assert keys and all(".layers.1.self_attn.q_proj." in k for k in keys)  # the tiny llama has 2


def test_frozen_prefix_gives_the_full_models_loss(chat: ChatSage, tmp_path: Path) -> None:
    """Training the last layer from cached hidden states is training the same model: the
    loss through the prefix equals the loss of a full forward pass, and a prefix shared
    between trials gives the same adapter as a fresh one."""
    config = LoRATrainConfig(**{**FAST.__dict__, "last_layers": 1})
    shared = FrozenPrefix(chat, PAIRS)
    train_lora(chat, "shared", PAIRS, config, prefix=shared)
    train_lora(chat, "fresh", PAIRS, config)
    batch = _collate(shared.encoded[:6], chat)
    with chat.using_adapter("shared"), torch.no_grad():
        full, _ = answer_loss(chat.hf_model, batch)
        cached, _ = answer_loss(chat.hf_model, _with_hidden(batch, shared.hidden(1, False)[:6], 1))
    assert torch.allclose(full, cached, atol=1e-5)
    assert evaluate(chat, "shared", PAIRS).loss == evaluate(chat, "fresh", PAIRS).loss
    with pytest.raises(ValueError, match="other pairs"):
        train_lora(chat, "other", PAIRS[:3], config, prefix=shared)


def test_saved_adapter_round_trips(chat: ChatSage, tmp_path: Path) -> None:
    train_lora(chat, "mem", PAIRS, FAST)
    in_memory = evaluate(chat, "mem", PAIRS)
    folder = save_adapter(chat, "mem", tmp_path / "mem")
    chat.delete_adapter("mem")
    # nothing stale left in memory (transformers drops peft_config with the last adapter)
    assert "mem" not in getattr(chat.hf_model, "peft_config", {})
    assert not any(".mem." in n for n, _ in chat.hf_model.named_parameters())
    chat.load_adapter(folder, "disk")
    from_disk = evaluate(chat, "disk", PAIRS)
    assert from_disk.loss == pytest.approx(in_memory.loss, abs=1e-6)
    assert from_disk.answers == in_memory.answers


def test_bad_input(chat: ChatSage, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training pairs"):
        train_lora(chat, "x", [], FAST)
    with pytest.raises(ValueError, match="empty answer"):
        train_lora(chat, "x", [TrainingPair("Compute 1+1.", " ")], FAST)
    assert "x" not in chat.adapters
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        save_adapter(chat, "nope", tmp_path / "nope")
    with pytest.raises(ValueError, match="no evaluation pairs"):
        evaluate(chat, None, [])
    train_lora(chat, "dup", PAIRS[:2], FAST)
    with pytest.raises(ValueError, match="already loaded"):
        train_lora(chat, "dup", PAIRS[:2], FAST)


@pytest.mark.parametrize(
    "config",
    [
        {"rank": 0},
        {"epochs": 0},
        {"learning_rate": 0},
        {"dropout": 1.0},
        {"last_layers": 0},
        {"target_modules": ()},
        {"alpha": 0},
    ],
)
def test_bad_config(config: dict) -> None:
    with pytest.raises(ValueError):
        LoRATrainConfig(**config)
