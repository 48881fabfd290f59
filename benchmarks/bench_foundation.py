"""Foundation benchmark: ChatSage generation and Trigger scoring on the embedded models.

    python benchmarks/bench_foundation.py [--tokens 32] [--trigger-samples 512] [--out FILE]

Prints tokens/s for one prompt and for a batch of 16, and Trigger samples/s (one batched
call), then writes the figures as Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from sage_agent import ChatSage, Trigger, arithmetic_verifier, default_embeddings
from sage_agent.tasks.problems import generate_steps
from sage_agent.tasks.steps import ATOMIC_PROMPT


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens per answer")
    parser.add_argument("--trigger-samples", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/foundation.md"))
    args = parser.parse_args()

    expressions = [step.expression for step in generate_steps(64, seed=0)]
    prompts = [ATOMIC_PROMPT.format(expression=e) for e in expressions]
    rows: list[tuple[str, str]] = []

    chat = ChatSage(max_tokens=args.tokens)
    _, load_s = _timed(lambda: chat.hf_model)
    rows.append(("ChatSage load (GGUF, cold in this process)", f"{load_s:.1f} s"))
    chat.invoke(prompts[0])  # warm-up

    # One prompt at a time: an open-ended prompt, so the answer runs to max_tokens.
    answers, seconds = _timed(lambda: [chat.invoke("Tell me a short story.") for _ in range(3)])
    tokens = sum(a.usage_metadata["output_tokens"] for a in answers)
    rows.append(("generation, 1 prompt", f"{tokens / seconds:.1f} tokens/s"))

    batch = prompts[:16]
    answers, seconds = _timed(lambda: chat.batch(batch))
    tokens = sum(a.usage_metadata["output_tokens"] for a in answers)
    rows.append(("generation, batch of 16 atomic steps", f"{tokens / seconds:.1f} tokens/s"))
    rows.append(("batch of 16 atomic steps, wall time", f"{seconds:.2f} s"))

    answers_128, seconds = _timed(lambda: chat.batch(prompts[:128]))
    rows.append(("128 atomic steps in batches of 16", f"{seconds:.1f} s"))

    n = args.trigger_samples
    predictions = [answers_128[i % len(answers_128)].text for i in range(n)]
    step_expressions = [expressions[i % len(answers_128)] for i in range(n)]
    margins = [
        answers_128[i % len(answers_128)].response_metadata["logits_margin_mean"] for i in range(n)
    ]
    trigger = Trigger(embeddings=default_embeddings(), verifier=arithmetic_verifier)
    trigger.score("1", "1")  # load the embedder outside the timing
    _, seconds = _timed(
        lambda: trigger.score_batch(
            predictions, expressions=step_expressions, logits_margins=margins
        )
    )
    rows.append(
        (f"Trigger, {n} samples, four metrics, one embedding call", f"{n / seconds:.0f} samples/s")
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Foundation benchmark\n\nCommand: `{command}`\n\nMachine: {machine}\n\n"
        f"| what | figure |\n|---|---|\n{table}\n"
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
