"""Trainer benchmark: sage-agent's LoRA trainer against a baseline written the obvious way.

    python benchmarks/bench_trainer.py --data ../shared/data/gsm8k/train.jsonl
        [--train 200] [--val 100] [--epochs 3] [--tag +] [--out results/trainer.md]

Both train rank-16 LoRA on the same GSM8K atoms of one operator signature for the same
epochs, and are scored on the same held-out atoms (greedy answers, numbers compared).

* baseline: peft ``get_peft_model`` on a freshly loaded model + transformers ``Trainer``,
  loss over the whole sequence, float32;
* sage-agent: ``train_lora`` on ChatSage's model: loss and output head on answer tokens
  only, the tokens every row of a batch shares (the system turn) run once per batch, bf16
  where the CPU has it (the model held in bf16 with float32 masters of the LoRA weights,
  math attention); all layers (batch 4, 8, 16 and 64, once in float32, once without the shared
  prefix, once with batches of pairs of similar length: ``group_by_length``), batch 64
  without the shared prefix, eager and with each decoder layer compiled by
  ``torch.compile`` (dynamic shapes; the compile time counts in its training seconds),
  batch 64 grouped by length, and LoRA on the last 10 layers only.

Both use the chat template's default system prompt, as the product does.

Prints samples/s, the ratio to the baseline, validation exact match, and the FLOP/s each
trainer achieved against two matmul rates measured in the same run: a 2048 cube's (the
machine's ceiling) and that of the model's own weight matmuls at a batch's shapes
(``layer_matmul_rate``: the ceiling of those matmuls, as a step runs them), and writes
benchmarks/results/trainer.md (or ``--out``: a run on a CPU of another kind goes beside
it, as trainer-<kind>.md).

FLOP count of one training sample of T tokens, A of them answer tokens (``flops``), T
counting the tokens the trainer runs (with the shared prefix, P shared tokens count P /
B for a batch of B): 2 N T for the forward pass through the decoder layers that run each
epoch and 2 N T for the backward pass through them (N: their weights, 106M for all 30
layers of SmolLM2-135M; the frozen weights get no gradient of their own), and 4 V d per
position where the output head runs (V x d: the head; the answer tokens for sage-agent,
every token for the baseline). With ``last_layers`` only those layers run each epoch:
the frozen layers' one pass (FrozenPrefix) is outside the timed training and not
counted. LoRA's own matmuls and attention's scores (under 2% at 40 tokens) are left out:
a slight undercount.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from common import cpu_features, gsm8k_steps
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from sage_agent import ChatSage, answer_batches
from sage_agent.embedded import smollm2_gguf
from sage_agent.records import TrainingPair
from sage_agent.tasks.steps import ATOMIC_PROMPT
from sage_agent.training.batches import collate, encode_pairs, shared_prefix
from sage_agent.training.trainer import (
    DEFAULT_TARGET_MODULES,
    LoRATrainConfig,
    supports_bf16,
    train_lora,
)
from sage_agent.training.validation import evaluate

RESULTS = Path(__file__).parent / "results"
FLOAT32 = "all layers, float32"
COMPILED = "all layers, batch 64, no shared prefix, torch.compile per layer"


def best_rate(burst: Callable[[], None], work: float, bursts: int = 6) -> float:
    """FLOP/s of ``burst`` (``work`` FLOPs), the best of ``bursts`` timed runs after one
    untimed one. The best, because on a shared AMX host one burst can run at a third of
    the next (measured: 516 to 1999 GFLOP/s in five bursts)."""
    burst()  # warm-up
    best = 0.0
    for _ in range(bursts):
        started = time.perf_counter()
        burst()
        best = max(best, work / (time.perf_counter() - started))
    return best


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 4) -> float:
    """FLOP/s of a ``size`` squared matmul in ``dtype``: the ceiling a trainer is held to."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)

    def burst() -> None:
        for _ in range(repeats):
            a @ b

    return best_rate(burst, repeats * 2 * size**3)


def layer_matmul_rate(model: torch.nn.Module, rows: int, dtype: torch.dtype) -> float:
    """FLOP/s of one decoder layer's weight matmuls at ``rows`` token rows: each weight's
    forward product ``x @ W.T`` and its input's gradient ``g @ W`` (the frozen weights
    get no gradient of their own). The ceiling of the matmuls a training step runs, at
    their own shapes: SmolLM2-135M's are 576 wide and a batch has a few hundred rows,
    where a 2048 cube runs faster."""
    weights = [
        torch.randn(module.weight.shape, dtype=dtype)
        for name, module in model.get_decoder().layers[0].named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    ]
    operands = [
        (torch.randn(rows, w.shape[1], dtype=dtype), torch.randn(rows, w.shape[0], dtype=dtype))
        for w in weights
    ]
    repeats = 8

    def burst() -> None:
        for _ in range(repeats):
            for w, (x, g) in zip(weights, operands, strict=True):
                x @ w.T
                g @ w

    return best_rate(burst, repeats * sum(2 * 2 * rows * w.numel() for w in weights))


@contextlib.contextmanager
def compiled_layers(model: torch.nn.Module) -> Iterator[None]:
    """Each decoder layer compiled (``torch.compile``, dynamic shapes) inside the block,
    eager again after it: the lever that fuses the elementwise operators."""
    layers = list(model.get_decoder().layers)
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None


def flops(
    model: torch.nn.Module, tokens: float, answer: float, first_layer: int, head_all: bool
) -> float:
    """Training FLOPs of one sample (see the module docstring)."""
    trained = sum(
        p.numel()
        for layer in model.get_decoder().layers[first_layer:]
        for n, p in layer.named_parameters()
        if "lora_" not in n and p.dim() == 2
    )
    head = model.get_output_embeddings().weight.numel()
    return 4 * trained * tokens + 4 * head * (tokens if head_all else answer)


def load_pairs(path: Path, tag: str, count: int, seed: int) -> list[TrainingPair]:
    pairs = [
        TrainingPair(ATOMIC_PROMPT.format(expression=step.expression), step.reference)
        for step in gsm8k_steps(path, seed)
        if step.tag == tag
    ][:count]
    if len(pairs) < count:
        raise SystemExit(f"only {len(pairs)} atoms with tag {tag!r} in {path}")
    return pairs


def baseline(
    train: list[TrainingPair], config: LoRATrainConfig, folder: Path
) -> tuple[float, float, float]:
    """The obvious way: a fresh model wrapped by get_peft_model, Trainer, whole-sequence
    loss, float32. Returns training seconds and the training FLOPs of a mean sample (and
    its tokens); the adapter is saved to ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(location.folder, gguf_file=location.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(location.folder, gguf_file=location.gguf_file)
    tokenizer.pad_token = tokenizer.eos_token
    # The GGUF weights were dequantized to float32 on load, but the model still carries
    # the GGUF quantizer, which Trainer refuses to train; drop it.
    model.hf_quantizer = None
    model.is_quantized = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(DEFAULT_TARGET_MODULES),
            task_type="CAUSAL_LM",
        ),
    )
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}],
            tokenize=False,
        )
        for p in train
    ]
    dataset = [tokenizer(t) for t in texts]
    args = TrainingArguments(
        output_dir=str(folder / "trainer"),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=config.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.save_pretrained(folder / "baseline")
    tokens = sum(len(d["input_ids"]) for d in dataset) / len(dataset)
    return seconds, flops(model.get_base_model(), tokens, 0, 0, head_all=True), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tag", default="+", help="operator signature of the atoms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "trainer.md")
    args = parser.parse_args()

    pairs = load_pairs(args.data, args.tag, args.train + args.val, args.seed)
    train, val = pairs[: args.train], pairs[args.train :]
    config = LoRATrainConfig(epochs=args.epochs, seed=args.seed)
    samples = len(train) * args.epochs
    rows = []
    training_dtype = torch.bfloat16 if supports_bf16("cpu") else torch.float32
    ceiling = matmul_rate(training_dtype)
    fp32_ceiling = ceiling if training_dtype == torch.float32 else matmul_rate(torch.float32)
    print(
        f"matmul ceiling ({training_dtype}): {ceiling / 1e9:.0f} GFLOP/s; "
        f"float32: {fp32_ceiling / 1e9:.0f} GFLOP/s",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("baseline: get_peft_model + Trainer, whole-sequence loss, float32 ...", flush=True)
        seconds, sample_flops, baseline_tokens = baseline(train, config, folder)
        default_prompt = ChatSage()
        default_prompt.load_adapter(folder / "baseline", "baseline")
        base_eval = evaluate(default_prompt, None, val)
        em = evaluate(default_prompt, "baseline", val).exact_match
        rate = samples / seconds
        rows.append(
            ("baseline (Trainer, float32, full loss)", seconds, rate, em, rate * sample_flops, True)
        )
        print(
            f"  {seconds:.0f} s, {rate:.1f} samples/s, {rate * sample_flops / 1e9:.0f} GFLOP/s, "
            f"val EM {em:.1%} (base model {base_eval.exact_match:.1%})"
        )
        del default_prompt

        chat = ChatSage()
        encoded = encode_pairs(chat, train)
        tokens = sum(len(ids) for ids, _ in encoded) / len(encoded)
        answer = sum(sum(label != -100 for label in labels) for _, labels in encoded) / len(encoded)
        shared = shared_prefix(collate(encoded, chat))
        model = chat.hf_model
        layers = model.config.num_hidden_layers
        # A step's own rows at the default batch: the shared prefix runs once, beside them.
        step_rows = round(config.batch_size * (tokens - shared))
        dtypes = (training_dtype, torch.float32)
        shape_before = {d: layer_matmul_rate(model, step_rows, d) for d in dtypes}
        print(
            f"matmul ceiling at the model's shapes ({step_rows} rows): "
            + ", ".join(f"{d}: {r / 1e9:.0f} GFLOP/s" for d, r in shape_before.items()),
            flush=True,
        )
        minimum = answer_batches.MIN_SHARED_PREFIX
        for row, (name, last_layers, batch, share, grouped) in enumerate(
            (
                ("all layers", None, 16, True, False),
                (FLOAT32, None, 16, True, False),
                ("all layers, no shared prefix", None, 16, False, False),
                ("all layers, batches grouped by length", None, 16, True, True),
                ("all layers, batch 8", None, 8, True, False),
                ("all layers, batch 4", None, 4, True, False),
                ("all layers, batch 64", None, 64, True, False),
                ("all layers, batch 64, no shared prefix", None, 64, False, False),
                (COMPILED, None, 64, False, False),
                ("all layers, batch 64, batches grouped by length", None, 64, True, True),
                ("last 10 layers", 10, 16, True, False),
            )
        ):
            adapter = f"row-{row}"  # a module name: the row's own may hold a "."
            run = LoRATrainConfig(
                epochs=args.epochs,
                seed=args.seed,
                last_layers=last_layers,
                batch_size=batch,
                group_by_length=grouped,
                bf16=False if name == FLOAT32 else None,
            )
            # A minimum beyond any prompt's length turns the shared prefix off.
            answer_batches.MIN_SHARED_PREFIX = minimum if share else 10**9
            with compiled_layers(model) if name == COMPILED else contextlib.nullcontext():
                result = train_lora(chat, adapter, train, run)
            answer_batches.MIN_SHARED_PREFIX = minimum
            em = evaluate(chat, adapter, val).exact_match
            chat.delete_adapter(adapter)
            run_tokens = tokens - shared * (1 - 1 / batch) if share and not last_layers else tokens
            per_sample = flops(model, run_tokens, answer, run.first_layer(layers), head_all=False)
            achieved = result.samples_per_second * per_sample
            held_to = fp32_ceiling if name == FLOAT32 else ceiling
            rows.append(
                (
                    f"sage-agent, {name}",
                    result.seconds,
                    result.samples_per_second,
                    em,
                    achieved,
                    name == FLOAT32 or training_dtype == torch.float32,
                )
            )
            print(
                f"sage-agent {name}: {result.seconds:.0f} s, "
                f"{result.samples_per_second:.1f} samples/s, {achieved / 1e9:.0f} GFLOP/s "
                f"({achieved / held_to:.0%} of the matmul ceiling), val EM {em:.1%}",
                flush=True,
            )

    # Measured again at the end: each row's share is of the higher of the two.
    ceiling_after = matmul_rate(training_dtype)
    fp32_after = matmul_rate(torch.float32)
    ceilings = {False: max(ceiling, ceiling_after), True: max(fp32_ceiling, fp32_after)}
    shape_after = {d: layer_matmul_rate(model, step_rows, d) for d in dtypes}
    shape_ceilings = {
        False: max(shape_before[training_dtype], shape_after[training_dtype]),
        True: max(shape_before[torch.float32], shape_after[torch.float32]),
    }
    baseline_rate = rows[0][2]
    table = "\n".join(
        f"| {name} | {s:.0f} | {rate:.1f} | {rate / baseline_rate:.1f}x | {em:.1%} | "
        f"{achieved / 1e9:.0f} | {achieved / ceilings[fp32]:.0%} | "
        f"{achieved / shape_ceilings[fp32]:.0%} |"
        for name, s, rate, em, achieved, fp32 in rows
    )
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Trainer benchmark\n\nCommand: `{command}`\n\n"
        f"Machine: {os.cpu_count()} CPU cores ({cpu_features()}), torch {torch.__version__}, "
        f"bf16 {'available' if supports_bf16('cpu') else 'not available'}.\n\n"
        f"{args.train} GSM8K atoms with operator signature `{args.tag}` "
        f'("{ATOMIC_PROMPT}"), {args.epochs} epochs, rank {config.rank}, '
        f"batch {config.batch_size} unless the row says, lr {config.learning_rate:g}, "
        f"seed {args.seed}; validation: {args.val} "
        "held-out atoms of the same signature. "
        f"A sample is {baseline_tokens:.1f} tokens as the baseline's template writes it, "
        f"{tokens:.1f} in sage-agent's ({answer:.1f} of them the answer's; {shared} shared "
        f"by every row). Base model validation EM: {base_eval.exact_match:.1%}.\n\n"
        f"Matmul ceiling measured in the same run (2048 x 2048 x 2048, the best of six "
        f"bursts, before the rows and after them): {fp32_ceiling / 1e9:.0f} and "
        f"{fp32_after / 1e9:.0f} GFLOP/s in float32"
        + (
            f", {ceiling / 1e9:.0f} and {ceiling_after / 1e9:.0f} GFLOP/s in bf16 (a row's "
            "share is of the higher; the bf16 rows' of bf16's, the float32 rows' of float32's)"
            if training_dtype == torch.bfloat16
            else " (this CPU has no native bf16, so sage-agent trains in float32)"
        )
        + ". The model's own matmuls (one decoder layer's weights, forward and the input's "
        f"gradient, {step_rows} rows: a batch-{config.batch_size} step's rows beyond the "
        "shared prefix; the "
        "best of six bursts, before the rows and after them): "
        + "; ".join(
            f"{str(d).removeprefix('torch.')} {shape_before[d] / 1e9:.0f} and "
            f"{shape_after[d] / 1e9:.0f} GFLOP/s"
            for d in shape_before  # one entry where training is float32 already
        )
        + ". FLOPs per sample: the module docstring of benchmarks/bench_trainer.py.\n\n"
        "| trainer | train s | samples/s | vs baseline | val EM | GFLOP/s | share of the "
        "matmul ceiling | share of the model-shape ceiling |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"{table}\n"
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
