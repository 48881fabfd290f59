"""Trainer benchmark: sage-agent's LoRA trainer against a baseline written the obvious way.

    python benchmarks/bench_trainer.py --data ../shared/data/gsm8k/train.jsonl
        [--train 300] [--val 100] [--epochs 4] [--tag +]

Both train rank-16 LoRA on the same GSM8K atoms of one operator signature for the same
epochs, and are scored on the same held-out atoms (greedy answers, numbers compared).

* baseline: peft ``get_peft_model`` on a freshly loaded model + transformers ``Trainer``,
  loss over the whole sequence, float32, the chat template's default system prompt;
* sage-agent: ``train_lora`` on ChatSage's model: loss and output head on answer tokens
  only, bf16 autocast where the CPU has it, an empty system prompt; all layers, and LoRA
  on the last 10 layers only.

Prints samples/s, the ratio to the baseline and validation exact match, and writes
benchmarks/results/trainer.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from common import gsm8k_steps
from langchain_core.messages import HumanMessage
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from sage_agent import ChatSage
from sage_agent.embedded import smollm2_gguf
from sage_agent.records import TrainingPair
from sage_agent.steps import ATOMIC_PROMPT
from sage_agent.trainer import (
    DEFAULT_TARGET_MODULES,
    LoRATrainConfig,
    supports_bf16,
    train_lora,
)
from sage_agent.validation import evaluate

RESULTS = Path(__file__).parent / "results"


def load_pairs(path: Path, tag: str, count: int, seed: int) -> list[TrainingPair]:
    pairs = [
        TrainingPair(ATOMIC_PROMPT.format(expression=step.expression), step.reference)
        for step in gsm8k_steps(path, seed)
        if step.tag == tag
    ][:count]
    if len(pairs) < count:
        raise SystemExit(f"only {len(pairs)} atoms with tag {tag!r} in {path}")
    return pairs


def baseline(train: list[TrainingPair], config: LoRATrainConfig, folder: Path) -> float:
    """The obvious way: a fresh model wrapped by get_peft_model, Trainer, whole-sequence
    loss, float32. Returns training seconds; the adapter is saved to ``folder``."""
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
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tag", default="+", help="operator signature of the atoms")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pairs = load_pairs(args.data, args.tag, args.train + args.val, args.seed)
    train, val = pairs[: args.train], pairs[args.train :]
    config = LoRATrainConfig(epochs=args.epochs, seed=args.seed)
    samples = len(train) * args.epochs
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("baseline: get_peft_model + Trainer, whole-sequence loss, float32 ...", flush=True)
        seconds = baseline(train, config, folder)
        default_prompt = ChatSage()  # the template's default system prompt, as trained
        default_prompt.load_adapter(folder / "baseline", "baseline")
        base_eval = evaluate(default_prompt, None, val)
        em = evaluate(default_prompt, "baseline", val).exact_match
        rows.append(("baseline (Trainer, float32, full loss)", seconds, samples / seconds, em))
        print(
            f"  {seconds:.0f} s, {samples / seconds:.1f} samples/s, val EM {em:.1%} "
            f"(base model {base_eval.exact_match:.1%})"
        )
        tokens = len(
            default_prompt.tokenizer(default_prompt.render_prompt([HumanMessage(val[0].prompt)]))[
                "input_ids"
            ]
        )
        del default_prompt

        chat = ChatSage(system_prompt="")
        short_tokens = len(
            chat.tokenizer(chat.render_prompt([HumanMessage(val[0].prompt)]))["input_ids"]
        )
        short_base = evaluate(chat, None, val).exact_match
        for name, last_layers in (("all layers", None), ("last 10 layers", 10)):
            result = train_lora(
                chat,
                name,
                train,
                LoRATrainConfig(epochs=args.epochs, seed=args.seed, last_layers=last_layers),
            )
            em = evaluate(chat, name, val).exact_match
            chat.delete_adapter(name)
            rows.append((f"sage-agent, {name}", result.seconds, result.samples_per_second, em))
            print(
                f"sage-agent {name}: {result.seconds:.0f} s, "
                f"{result.samples_per_second:.1f} samples/s, val EM {em:.1%}"
            )

    baseline_rate = rows[0][2]
    table = "\n".join(
        f"| {name} | {s:.0f} | {rate:.1f} | {rate / baseline_rate:.1f}x | {em:.1%} |"
        for name, s, rate, em in rows
    )
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trainer.md").write_text(
        f"# Trainer benchmark\n\nCommand: `{command}`\n\n"
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"bf16 {'available' if supports_bf16('cpu') else 'not available'}.\n\n"
        f"{args.train} GSM8K atoms with operator signature `{args.tag}` "
        f'("{ATOMIC_PROMPT}"), {args.epochs} epochs, rank 16, batch 16, lr 1e-3, '
        f"seed {args.seed}; validation: {args.val} held-out atoms of the same signature. "
        f"Prompt: {tokens} tokens with the template's default system prompt (baseline), "
        f"{short_tokens} with an empty one (sage-agent). Base model validation EM: "
        f"{base_eval.exact_match:.1%} (default prompt), {short_base:.1%} (empty system "
        f"prompt).\n\n"
        "| trainer | train s | samples/s | vs baseline | val EM |\n|---|---|---|---|---|\n"
        f"{table}\n"
    )
    print(f"\nwritten to {RESULTS / 'trainer.md'}")


if __name__ == "__main__":
    main()
