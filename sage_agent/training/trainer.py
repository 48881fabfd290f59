"""Supervised LoRA fine-tuning of ChatSage's model on (prompt, answer) pairs, made fast
for CPUs.

What makes it fast (each measured in benchmarks/bench_trainer.py):

* the loss covers the answer tokens only, and the output head (576 x 49,152 on SmolLM2)
  runs only at those positions, not over the whole prompt;
* bf16 end to end where the CPU supports it (float32 otherwise): the whole model is held
  in bf16 while a run trains and the optimiser steps float32 masters of the LoRA weights
  (mixed precision without autocast's casts at every use), and attention goes through
  PyTorch's math kernel on short rows, whose backward is faster than the flash kernel's
  on a step's batch (``batches.pass_attention``);
* one base model for every trial: adapters are added to and deleted from ChatSage's
  model, never a new wrapped copy;
* with ``last_layers`` set, LoRA sits on the last N layers only, and the hidden states
  entering them are computed once (a ``FrozenPrefix``, shareable by every trial on the same
  pairs) and then only those N layers run, forward and backward, each epoch.

Prompts are rendered with ChatSage's own chat template, so the adapter is trained on
exactly the text it will answer at inference.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers.trainer_pt_utils import get_length_grouped_indices

from sage_agent.chat import ChatSage
from sage_agent.errors import ConfigError, InvalidInput
from sage_agent.records import TrainingPair
from sage_agent.training.adapter_files import start_adapter
from sage_agent.training.batches import (
    answer_loss,
    collate,
    encode_pairs,
    pass_attention,
    passes,
    release_freed_memory,
)

DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

Progress = Callable[[int, int, float], None]
"""Called after each optimiser step with (step, total steps, loss)."""


@dataclass
class LoRATrainConfig:
    """One LoRA training run."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    epochs: int = field(default=4, metadata={"help": "Passes over the training pairs."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per optimiser step."})
    target_modules: tuple[str, ...] = field(
        default=DEFAULT_TARGET_MODULES, metadata={"help": "Module names that get LoRA."}
    )
    last_layers: int | None = field(
        default=None,
        metadata={"help": "LoRA on the last N decoder layers only (None: all layers)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Train in bf16 (float32 masters); None: when the CPU supports it."},
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batches of pairs of similar length (transformers' length-grouped "
            "order, as Trainer's group_by_length), so less of each batch is padding."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and shuffling."})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "A saved adapter's folder whose weights the run starts from (of the "
            "same rank, alpha, modules and layers), to train on what it learned; None: "
            "peft's initialisation."
        },
    )

    def __post_init__(self) -> None:
        if self.rank < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("rank, epochs and batch_size must be at least 1")
        if not self.learning_rate > 0 or not 0 <= self.dropout < 1 or not self.alpha > 0:
            raise ConfigError(
                f"need learning_rate > 0, 0 <= dropout < 1 and alpha > 0: {self.learning_rate}, "
                f"{self.dropout}, {self.alpha}"
            )
        if self.last_layers is not None and self.last_layers < 1:
            raise ConfigError(f"last_layers must be at least 1, not {self.last_layers}")
        if not self.target_modules:
            raise ConfigError("target_modules is empty")

    def first_layer(self, num_layers: int) -> int:
        """The first of ``num_layers`` decoder layers that LoRA trains (0: all of them)."""
        return 0 if self.last_layers is None else max(0, num_layers - self.last_layers)

    def lora_config(self, num_layers: int) -> LoraConfig:
        layers = None
        if self.last_layers is not None:
            layers = list(range(self.first_layer(num_layers), num_layers))
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            layers_to_transform=layers,
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class TrainResult:
    adapter: str
    loss: float
    """Mean training loss of the last epoch."""
    seconds: float
    samples_per_second: float
    steps: int
    losses: tuple[float, ...] = ()
    """The training loss of every optimiser step, in order (the trial's loss curve)."""


@functools.cache
def supports_bf16(device_type: str) -> bool:
    """True where the device computes in bf16 natively: a CPU with AVX512-BF16 or AMX,
    a CUDA GPU that says so."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _device_type(chat: ChatSage) -> str:
    """ "cpu", "cuda", ...: what supports_bf16 is asked (ChatSage.device may be "cuda:1")."""
    return torch.device(chat.device).type


@contextlib.contextmanager
def model_in_bf16(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Hold every float32 weight of the model in bf16 inside the block, then give back the
    very tensors they had (inference is unchanged, bit for bit).

    Training then runs in bf16 end to end, with no autocast: autocast casts a float32
    weight to a fresh bf16 copy at every use, forward and backward, and LoRA's own
    weights at each of its 210 modules (a third of a step's time went to those casts
    and LoRA's float32 arithmetic). The trained weights' float32 masters live in the
    optimiser (``LoRARun``), which copies them back here after each step.
    """
    if not enabled:
        yield
        return
    kept: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for param in model.parameters():
            if param.dtype == torch.float32:
                kept.append((param, param.data))
                param.data = param.data.to(torch.bfloat16)
        yield
    finally:
        for param, original in kept:
            param.data = original


class FrozenPrefix:
    """The hidden states that enter decoder layer ``first`` for each pair, computed once.

    With LoRA on the last N layers only, the first L - N layers are the frozen base model,
    so their output does not change while training: computing it once saves their forward
    pass on every epoch, and one FrozenPrefix serves every trial on the same pairs.
    """

    def __init__(self, chat: ChatSage, pairs: Sequence[TrainingPair], batch_size: int = 16):
        self.chat, self.pairs, self.batch_size = chat, list(pairs), batch_size
        self.encoded = encode_pairs(chat, self.pairs)
        self._hidden: dict[int, list[torch.Tensor]] = {}

    def hidden(self, first: int, bf16: bool) -> list[torch.Tensor]:
        """Per pair, a (tokens, hidden size) tensor: the input of layer ``first``."""
        if first not in self._hidden:
            model, states = self.chat.hf_model, []
            with (
                self.chat.lock,  # before the switch: no other thread switches meanwhile
                torch.no_grad(),
                model_in_bf16(model, bf16),
                self.chat.using_adapter(None),
            ):
                for start in range(0, len(self.encoded), self.batch_size):
                    chunk = self.encoded[start : start + self.batch_size]
                    batch = collate(chunk, self.chat)
                    output = model.get_decoder()(
                        input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"],
                        output_hidden_states=True,
                        use_cache=False,
                    )
                    entering = output.hidden_states[first]
                    states += [
                        entering[row, : len(ids)].clone() for row, (ids, _) in enumerate(chunk)
                    ]
            self._hidden[first] = states
        return self._hidden[first]


def _with_hidden(batch: dict[str, Any], states: list[torch.Tensor], first: int) -> dict[str, Any]:
    shape = (*batch["input_ids"].shape, states[0].shape[-1])
    hidden = torch.zeros(shape, dtype=states[0].dtype, device=states[0].device)
    for row, state in enumerate(states):
        hidden[row, : len(state)] = state
    return {**batch, "hidden": hidden, "first_layer": first}


class LoRARun:
    """One adapter's training, which may stop and go on: ``train(steps)`` runs that many
    more optimiser steps (successive halving trains every candidate a little, then only
    the better ones further). Its batches are drawn up front from the seed, so a run
    trained in pieces is the run trained at once.

    Creating it adds adapter ``name`` to the chat model's base model; only that adapter's
    weights train. The adapter stays loaded (not activated) for evaluation and saving, and
    ``chat.delete_adapter(name)`` frees it. ``prefix`` (a FrozenPrefix of the same pairs)
    lets several runs with ``last_layers`` share the frozen layers' output.
    """

    def __init__(
        self,
        chat: ChatSage,
        name: str,
        pairs: Sequence[TrainingPair],
        config: LoRATrainConfig | None = None,
        prefix: FrozenPrefix | None = None,
    ) -> None:
        self.chat, self.name = chat, name
        self.config = config = config or LoRATrainConfig()
        if not pairs:
            raise InvalidInput("no training pairs")
        model = chat.hf_model
        self.bf16 = supports_bf16(_device_type(chat)) if config.bf16 is None else config.bf16
        layers = model.config.num_hidden_layers
        self.first = config.first_layer(layers)
        if prefix is not None and prefix.pairs != list(pairs):
            raise InvalidInput("the FrozenPrefix was built for other pairs")
        self.states: list[torch.Tensor] | None = None
        if self.first > 0:
            prefix = prefix or FrozenPrefix(chat, pairs, config.batch_size)
            self.encoded, self.states = prefix.encoded, prefix.hidden(self.first, self.bf16)
        else:
            self.encoded = encode_pairs(chat, pairs)
        torch.manual_seed(config.seed)
        start_adapter(chat, name, config.lora_config(layers), config.init_from)
        self.trainable = [
            param for param_name, param in model.named_parameters() if f".{name}." in param_name
        ]
        self._freeze_all_but(())
        # In bf16 the model computes with bf16 copies of the trained weights and the
        # optimiser steps float32 masters, which share the parameters' float32 storage
        # (so the adapter is float32 again outside training, and saved as such).
        self.masters = (
            [torch.nn.Parameter(param.data) for param in self.trainable]
            if self.bf16
            else self.trainable
        )
        self.optimizer = torch.optim.AdamW(self.masters, lr=config.learning_rate, weight_decay=0.0)
        self.batches: list[list[int]] = []
        for indices in _epoch_orders(self.encoded, config):
            self.batches += [
                indices[start : start + config.batch_size]
                for start in range(0, len(indices), config.batch_size)
            ]
        self.steps_per_epoch = math.ceil(len(self.encoded) / config.batch_size)
        self.losses: list[float] = []
        self.samples = 0
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return len(self.losses) == len(self.batches)

    def train(self, steps: int | None = None, progress: Progress | None = None) -> TrainResult:
        """Run ``steps`` more optimiser steps (None: to the end of the configured
        epochs); returns the run so far."""
        model, total = self.chat.hf_model, len(self.batches)
        end = total if steps is None else min(total, len(self.losses) + steps)
        started = time.perf_counter()
        with self.chat.lock, self.chat.using_adapter(self.name):
            # Only this run's weights get gradients (the base model's and the other loaded
            # adapters' would cost their backward pass).
            self._freeze_all_but(self.trainable)
            model.train()
            try:
                with model_in_bf16(model, self.bf16):
                    self._steps(end, total, progress)
            finally:
                model.eval()
                self._freeze_all_but(())
                self.seconds += time.perf_counter() - started
        if self.done:  # not between a search's rungs: the next rung would fault it all in
            release_freed_memory()
        return self.result()

    def _steps(self, end: int, total: int, progress: Progress | None) -> None:
        model = self.chat.hf_model
        for chosen in self.batches[len(self.losses) : end]:
            # The batch's mean loss over its answer tokens, pass by pass (``passes``).
            rows = [self.encoded[i] for i in chosen]
            answer_tokens = sum(sum(label != -100 for label in labels) for _, labels in rows)
            loss_value = 0.0
            for run in passes([len(ids) for ids, _ in rows]):
                batch = collate([rows[r] for r in run], self.chat)
                if self.states is not None:
                    states = [self.states[chosen[r]] for r in run]
                    batch = _with_hidden(batch, states, self.first)
                with pass_attention(batch["input_ids"].shape[1], self.bf16):
                    loss, count = answer_loss(model, batch)
                (loss * (count / answer_tokens)).backward()
                loss_value += loss.item() * count / answer_tokens
            if self.bf16:
                for param, master in zip(self.trainable, self.masters, strict=True):
                    master.grad, param.grad = param.grad.float(), None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.bf16:
                with torch.no_grad():
                    for param, master in zip(self.trainable, self.masters, strict=True):
                        param.copy_(master)
            self.losses.append(loss_value)
            self.samples += len(chosen)
            if progress is not None:
                progress(len(self.losses), total, self.losses[-1])

    def _freeze_all_but(self, trainable: Sequence[torch.Tensor]) -> None:
        chosen = {id(param) for param in trainable}
        for param in self.chat.hf_model.parameters():
            param.requires_grad = id(param) in chosen

    def result(self) -> TrainResult:
        last = self.losses[-self.steps_per_epoch :] or [math.nan]
        return TrainResult(
            adapter=self.name,
            loss=sum(last) / len(last),
            seconds=self.seconds,
            samples_per_second=self.samples / self.seconds if self.seconds else 0.0,
            steps=len(self.losses),
            losses=tuple(self.losses),
        )


def _epoch_orders(
    encoded: Sequence[tuple[list[int], list[int]]], config: LoRATrainConfig
) -> list[list[int]]:
    """The order of the pairs in each epoch, drawn from the seed: shuffled, or with
    ``group_by_length`` shuffled in groups of similar length (transformers' helper, which
    puts the longest batch first so that running out of memory happens at once)."""
    if config.group_by_length:
        lengths = [len(ids) for ids, _ in encoded]
        generator = torch.Generator().manual_seed(config.seed)
        return [
            get_length_grouped_indices(lengths, config.batch_size, generator=generator)
            for _ in range(config.epochs)
        ]
    order, orders = random.Random(config.seed), []
    for _ in range(config.epochs):
        indices = list(range(len(encoded)))
        order.shuffle(indices)
        orders.append(indices)
    return orders


def train_lora(
    chat: ChatSage,
    name: str,
    pairs: Sequence[TrainingPair],
    config: LoRATrainConfig | None = None,
    progress: Progress | None = None,
    prefix: FrozenPrefix | None = None,
) -> TrainResult:
    """Add adapter ``name`` to the chat model's base model and train it on ``pairs`` for
    the configured epochs (a ``LoRARun`` trained to its end). The same seed gives the
    same adapter."""
    return LoRARun(chat, name, pairs, config, prefix).train(progress=progress)
