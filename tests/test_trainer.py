"""The LoRA trainer on the tiny llama: exact answer-only loss, what trains, determinism,
saving, and bad input."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from sage_agent import AdapterError, ChatSage
from sage_agent.records import TrainingPair
from sage_agent.training.adapter_files import save_adapter
from sage_agent.training.batches import (
    MIN_SHARED_PREFIX,
    SHORT_ROWS,
    answer_loss,
    collate,
    encode_pairs,
    pass_attention,
    passes,
    release_freed_memory,
    shared_prefix,
)
from sage_agent.training.trainer import (
    FrozenPrefix,
    LoRARun,
    LoRATrainConfig,
    _with_hidden,
    model_in_bf16,
    train_lora,
)
from sage_agent.training.validation import evaluate, teacher_forced

PAIRS = [TrainingPair(f"Compute {a}+{b}.", str(a + b)) for a in range(6) for b in range(4)]
FAST = LoRATrainConfig(rank=4, epochs=3, learning_rate=1e-2, batch_size=8, bf16=False)


@pytest.fixture
def chat(tiny_model_dir: Path) -> ChatSage:
    return ChatSage(model=str(tiny_model_dir), max_tokens=4)


def test_answer_loss_equals_full_cross_entropy_on_answer_tokens(chat: ChatSage) -> None:
    batch = collate(encode_pairs(chat, PAIRS[:5]), chat)
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


def test_the_shared_prefix_runs_once_with_the_same_loss_and_gradients(chat: ChatSage) -> None:
    batch = collate(encode_pairs(chat, PAIRS[:8]), chat)
    ids = batch["input_ids"]
    start = shared_prefix(batch)
    assert start >= MIN_SHARED_PREFIX  # the chat template's user turn and "Compute "
    assert (ids[:, :start] == ids[:1, :start]).all() and not (ids[:, start] == ids[0, start]).all()
    chat.add_adapter("prefix", LoRATrainConfig(rank=4).lora_config(2))
    model = chat.hf_model
    weights = [p for name, p in model.named_parameters() if ".prefix." in name]
    with chat.using_adapter("prefix"):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B.prefix" in name:
                    param.normal_(0, 0.5)  # B = 0 at first would hide a wrong gradient
        shared, _ = answer_loss(model, batch)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        whole = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=-100,
        )
        pairs = zip(
            torch.autograd.grad(shared, weights), torch.autograd.grad(whole, weights), strict=True
        )
    chat.delete_adapter("prefix")
    assert torch.allclose(shared, whole, atol=1e-5)
    for a, b in pairs:  # float32 sums in another order: equal to about 1e-4 relative
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def test_prompt_tokens_are_masked(chat: ChatSage) -> None:
    ((ids, labels),) = encode_pairs(chat, PAIRS[:1])
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


def test_bf16_training_holds_the_model_in_bf16_and_gives_it_back(chat: ChatSage) -> None:
    model = chat.hf_model
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    bf16 = LoRATrainConfig(**{**FAST.__dict__, "bf16": True})
    run = LoRARun(chat, "b", PAIRS, bf16)
    linear = model.get_decoder().layers[0].self_attn.q_proj.base_layer.weight
    lora = model.get_decoder().layers[0].self_attn.q_proj.lora_A["b"].weight
    with model_in_bf16(model):
        assert linear.dtype == lora.dtype == torch.bfloat16
        assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    first = run.train(1)
    assert not torch.equal(lora, torch.zeros_like(lora))
    master = run.masters[run.trainable.index(lora)]
    assert lora.dtype == master.dtype == torch.float32
    assert lora.data_ptr() == master.data_ptr()  # the adapter is its float32 master
    result = run.train()
    assert linear.dtype == torch.float32
    for name, param in model.named_parameters():
        if name.replace(".base_layer", "") in base:  # the very float32 values are back
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
        else:
            assert param.dtype == torch.float32
    # The first batch in float32 (LoRA's B starts at zero, so the base model's loss):
    # bf16 differs by its rounding only.
    float32 = answer_loss(model, collate([run.encoded[i] for i in run.batches[0]], chat))
    assert first.losses[0] == pytest.approx(float32[0].item(), rel=0.03)
    assert result.losses[-1] < result.losses[0]


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


def test_a_run_starts_from_a_saved_adapters_weights(chat: ChatSage, tmp_path: Path) -> None:
    from dataclasses import replace

    first = train_lora(chat, "first", PAIRS, FAST)
    folder = save_adapter(chat, "first", tmp_path / "first")
    saved = load_file(folder / "adapter_model.safetensors")
    warm = LoRARun(chat, "warm", PAIRS, replace(FAST, init_from=str(folder)))
    start = save_adapter(chat, "warm", tmp_path / "start") / "adapter_model.safetensors"
    assert all(torch.equal(v, saved[k]) for k, v in load_file(start).items())
    on = warm.train()
    fresh = train_lora(chat, "fresh", PAIRS, FAST)
    # It goes on where the first run ended, not from a fresh adapter's loss.
    assert on.losses[0] < (first.losses[-1] + fresh.losses[0]) / 2
    # A saved adapter of another shape is refused, naming what differs; nothing is left.
    with pytest.raises(AdapterError, match=r"rank 4 \(the run's 8\)"):
        LoRARun(chat, "other", PAIRS, replace(FAST, rank=8, init_from=str(folder)))
    with pytest.raises(AdapterError, match="no peft adapter"):
        LoRARun(chat, "gone", PAIRS, replace(FAST, init_from=str(tmp_path / "gone")))
    assert "other" not in chat.adapters and "gone" not in chat.adapters


def test_a_run_trained_in_pieces_is_the_run_trained_at_once(chat: ChatSage) -> None:
    whole = train_lora(chat, "whole", PAIRS, FAST)
    pieces = LoRARun(chat, "pieces", PAIRS, FAST)
    first = pieces.train(2)
    assert first.steps == 2 and not pieces.done
    assert not any(p.requires_grad for p in chat.hf_model.parameters())  # frozen between
    last = pieces.train()
    assert pieces.done and last.steps == whole.steps == 9
    assert last.losses == pytest.approx(whole.losses)
    weights = dict(chat.hf_model.named_parameters())
    for name, param in weights.items():
        if ".whole." in name:
            assert torch.allclose(param, weights[name.replace(".whole.", ".pieces.")])


def test_passes_bound_the_padded_tokens_of_one_pass() -> None:
    assert passes([10, 10, 10], limit=30) == [[0, 1, 2]]
    assert passes([10, 20, 5, 40], limit=40) == [[0, 1], [2], [3]]
    assert passes([50, 3], limit=40) == [[0], [1]]  # a long row alone; none is dropped


@pytest.mark.parametrize("last_layers", [None, 1])
def test_a_batch_in_several_passes_trains_as_in_one(
    chat: ChatSage, monkeypatch, last_layers
) -> None:
    """Long prompts split a batch into passes (``PASS_TOKENS``): the gradients add up to
    the one-pass batch's, so the losses and the adapter are the same."""
    config = LoRATrainConfig(**{**FAST.__dict__, "last_layers": last_layers})
    whole = train_lora(chat, "one-pass", PAIRS, config)
    runs: list[list[int]] = []

    def small_passes(lengths: list[int]) -> list[list[int]]:
        runs.extend(passes(lengths, limit=2 * max(lengths)))
        return passes(lengths, limit=2 * max(lengths))

    monkeypatch.setattr("sage_agent.training.trainer.passes", small_passes)
    split = train_lora(chat, "passes", PAIRS, config)
    assert len(runs) > len(whole.losses)  # batches did run in several passes
    assert split.losses == pytest.approx(whole.losses, rel=1e-4)
    weights = dict(chat.hf_model.named_parameters())
    for name, param in weights.items():
        if ".one-pass." in name:
            assert torch.allclose(param, weights[name.replace(".one-pass.", ".passes.")], atol=1e-5)


def test_long_rows_leave_the_math_attention_kernel_with_the_same_loss_and_gradients(
    chat: ChatSage,
) -> None:
    """In bf16 the math kernel runs short rows only: a long row's backward would keep its
    attention matrices. PyTorch's own choice gives the math kernel's loss and gradients on
    padded long rows (computed here in float32, where the two compare exactly)."""
    assert not isinstance(pass_attention(SHORT_ROWS, True), contextlib.nullcontext)
    assert isinstance(pass_attention(SHORT_ROWS + 1, True), contextlib.nullcontext)
    assert isinstance(pass_attention(8, False), contextlib.nullcontext)
    pairs = [TrainingPair("word " * (SHORT_ROWS + 40 * i), str(i)) for i in range(3)]
    batch = collate(encode_pairs(chat, pairs), chat)
    width = batch["input_ids"].shape[1]
    assert width > SHORT_ROWS and not bool(batch["attention_mask"].all())  # padded rows
    run = LoRARun(chat, "long", pairs, FAST)
    run._freeze_all_but(run.trainable)
    found = []
    with chat.using_adapter("long"):
        for kernel in (sdpa_kernel(SDPBackend.MATH), pass_attention(width, True)):
            with kernel:
                loss, _ = answer_loss(chat.hf_model, batch)
            loss.backward()
            found.append((loss.item(), [p.grad.clone() for p in run.trainable]))
            for param in run.trainable:
                param.grad = None
    run._freeze_all_but(())
    (math_loss, math_grads), (loss, grads) = found
    assert loss == pytest.approx(math_loss, abs=1e-5)
    for expected, got in zip(math_grads, grads, strict=True):
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_freed_memory_goes_back_to_the_system() -> None:
    """Freed blocks between live ones stay in the C heap until the heap is trimmed, as a
    training's activations do."""

    def rss_mb() -> int:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024

    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 250 MB on the heap
    kept = blocks[::50]  # live blocks: the heap cannot simply shrink from its top
    del blocks
    before = rss_mb()
    release_freed_memory()
    assert rss_mb() < before - 100
    assert len(kept) == 80


def test_length_grouped_batches_pad_less_and_cover_every_pair(chat: ChatSage) -> None:
    # Pairs of very different lengths: grouped, each batch holds similar ones, so the
    # padded width summed over batches shrinks; every epoch still uses every pair once,
    # and the same seed draws the same batches.
    pairs = [TrainingPair("Compute " + "1+" * (i % 8) * 6 + "1.", str(i)) for i in range(64)]
    config = LoRATrainConfig(**{**FAST.__dict__, "epochs": 2})
    grouped = LoRATrainConfig(**{**config.__dict__, "group_by_length": True})
    shuffled_run = LoRARun(chat, "shuffled", pairs, config)
    grouped_run = LoRARun(chat, "grouped", pairs, grouped)

    def padded(run: LoRARun) -> int:
        return sum(max(len(run.encoded[i][0]) for i in batch) * len(batch) for batch in run.batches)

    assert padded(grouped_run) < 0.9 * padded(shuffled_run)
    per_epoch = grouped_run.steps_per_epoch
    for epoch in (grouped_run.batches[:per_epoch], grouped_run.batches[per_epoch:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(64))
    assert LoRARun(chat, "again", pairs, grouped).batches == grouped_run.batches
    assert grouped_run.train(2).steps == 2


def test_teacher_forced_exact_match_is_what_greedy_decoding_writes(chat: ChatSage) -> None:
    # An adapter that learned to answer "9": the teacher-forced verdict must say which
    # pairs greedy decoding writes exactly (those whose answer is 9, not the others), and
    # its loss is the one evaluate reports.
    nines = [TrainingPair(f"Compute {a}+{9 - a}.", "9") for a in range(10)]
    train_lora(chat, "a", nines, LoRATrainConfig(**{**FAST.__dict__, "epochs": 10}))
    pairs = nines[:4] + PAIRS[:6]
    forced = teacher_forced(chat, "a", pairs)
    with chat.using_adapter("a"):
        written = [m.text for m in chat.bind(max_tokens=8).batch([p.prompt for p in pairs])]
    assert forced.exact == tuple(w == p.answer for w, p in zip(written, pairs, strict=True))
    assert forced.exact[:4] == (True,) * 4 and not any(forced.exact[4:])
    assert forced.loss == pytest.approx(evaluate(chat, "a", pairs).loss)
    assert teacher_forced(chat, None, pairs).exact_match < forced.exact_match


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
    batch = collate(shared.encoded[:6], chat)
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
