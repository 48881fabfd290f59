"""Training pairs as token batches, and the forward pass over their answers that both
training (``trainer``) and teacher-forced validation (``validation``) run."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from langchain_core.messages import HumanMessage
from torch.nn.attention import SDPBackend, sdpa_kernel

from sage_agent.chat import ChatSage
from sage_agent.errors import InvalidInput
from sage_agent.records import TrainingPair


def encode_pairs(
    chat: ChatSage, pairs: Sequence[TrainingPair]
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per pair: the rendered prompt is masked (-100), the answer and
    the end-of-turn token are learned."""
    tokenizer = chat.tokenizer
    encoded = []
    for pair in pairs:
        if not pair.answer.strip():
            raise InvalidInput(f"training pair with an empty answer: {pair.prompt[:60]!r}")
        prompt = tokenizer(
            chat.render_prompt([HumanMessage(pair.prompt)]), add_special_tokens=False
        )
        answer = tokenizer(pair.answer + tokenizer.eos_token, add_special_tokens=False)
        ids = prompt["input_ids"] + answer["input_ids"]
        labels = [-100] * len(prompt["input_ids"]) + answer["input_ids"]
        encoded.append((ids, labels))
    return encoded


PASS_TOKENS = 4096
"""Padded tokens one forward and backward pass holds at most. A batch of long prompts
(PubMedQA's abstracts: 346 tokens on average, 601 at most) runs as several passes whose
gradients add up: a pass keeps every layer's activations for its backward pass, so its
size sets a training's peak memory (benchmarks/bench_tasks.py measures it per family).
Sixteen such rows in one pass ran out of 24 GiB; a batch of atomic steps (about 60
tokens a row) is one pass even at batch 64."""

SHORT_ROWS = 256
"""Widest pass (tokens a row) whose attention runs PyTorch's math kernel in bf16."""


def pass_attention(width: int, bf16: bool) -> contextlib.AbstractContextManager[None]:
    """The attention kernel of a training pass whose rows are ``width`` tokens wide. In
    bf16 on short rows, PyTorch's math kernel: its backward beat the flash kernel's on a
    batch of atomic steps. On long rows (and in float32) PyTorch's own choice: the math
    kernel keeps each row's attention matrix, width squared per head and layer, for the
    backward pass, and on PubMedQA's rows it was both slower and larger."""
    return (
        sdpa_kernel(SDPBackend.MATH) if bf16 and width <= SHORT_ROWS else contextlib.nullcontext()
    )


def release_freed_memory() -> None:
    """Give the pages a training freed back to the operating system (glibc's
    ``malloc_trim``; nothing elsewhere). Freed activations stay in the C heap, so a
    process that trained on long prompts would otherwise hold its peak for good."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(name).malloc_trim(0)


def passes(lengths: Sequence[int], limit: int = PASS_TOKENS) -> list[list[int]]:
    """The rows of a batch (positions in ``lengths``, their token counts) in consecutive
    runs whose padded size, rows times the longest row, stays within ``limit`` tokens; a
    row longer than ``limit`` has a pass of its own."""
    runs: list[list[int]] = []
    width = 0
    for row, length in enumerate(lengths):
        if runs and max(width, length) * (len(runs[-1]) + 1) <= limit:
            runs[-1].append(row)
            width = max(width, length)
        else:
            runs.append([row])
            width = length
    return runs


def collate(
    batch: Sequence[tuple[list[int], list[int]]], chat: ChatSage
) -> dict[str, torch.Tensor]:
    """Right-padded ids, labels and attention mask of a batch, on the chat model's device."""
    pad_id = chat.tokenizer.pad_token_id
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (row_ids, row_labels) in enumerate(batch):
        ids[row, : len(row_ids)] = torch.tensor(row_ids)
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
        mask[row, : len(row_ids)] = 1
    return {
        "input_ids": ids.to(chat.device),
        "labels": labels.to(chat.device),
        "attention_mask": mask.to(chat.device),
    }


def answer_logits(
    model: Any, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output head's logits at the answer tokens' positions, their targets, and where
    they are (a mask over the positions the decoder's output covers, row-major like the
    logits). The decoder runs on the whole sequence, the tokens every row starts with
    once (``shared_prefix``), or, when the batch carries ``hidden`` and ``first_layer``
    from a FrozenPrefix, on the layers from there on; the output head only where a
    label is."""
    decoder = model.get_decoder()
    start = 0
    if "hidden" in batch:
        with _only_layers(decoder, batch["first_layer"]):
            hidden = decoder(
                inputs_embeds=batch["hidden"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            ).last_hidden_state
    elif (start := shared_prefix(batch)) >= MIN_SHARED_PREFIX:
        # The prefix's keys and values are computed for one row and repeated for all:
        # the gradient reaches the LoRA weights through both passes, as in one.
        ids = batch["input_ids"]
        cache = decoder(input_ids=ids[:1, :start], use_cache=True).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])
        hidden = decoder(
            input_ids=ids[:, start:],
            attention_mask=batch["attention_mask"],
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
    else:
        start = 0
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    targets = batch["labels"][:, start + 1 :]
    where = targets != -100
    return model.get_output_embeddings()(hidden[:, :-1][where]), targets[where], where


MIN_SHARED_PREFIX = 4
"""Shorter common prefixes are not worth a pass of their own."""


def shared_prefix(batch: dict[str, Any]) -> int:
    """How many leading tokens every row of the batch has in common (the chat template's
    system prompt and the start of the user turn: 26 of a GSM8K step's ~60 tokens with
    SmolLM2's default system prompt), stopping before the first answer token's
    predecessor so that every label is predicted from the rows' own part."""
    ids, labels = batch["input_ids"], batch["labels"]
    common = int((ids == ids[:1]).all(dim=0).long().cumprod(dim=0).sum())
    first_answer = int((labels != -100).long().argmax(dim=1).min())
    return min(common, first_answer - 1)


def answer_loss(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the answer tokens, and their count."""
    logits, targets, _ = answer_logits(model, batch)
    return F.cross_entropy(logits.float(), targets), len(targets)


@contextmanager
def _only_layers(decoder: Any, first: int) -> Iterator[None]:
    """Run the decoder from layer ``first`` on: its own forward (masks, rotary embeddings,
    final norm) fed with hidden states instead of token ids, over a shortened layer list."""
    layers = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(layers)[first:])
    try:
        yield
    finally:
        decoder.layers = layers
