"""The same held-out GSM8K steps answered in process (ChatSage) and through a vLLM server
(VLLMEngine), one at a time and from several threads, with and without a LoRA adapter.

    python benchmarks/bench_serving.py --data ../shared/data/gsm8k/train.jsonl
        [--problems 100] [--adapter-problems 25] [--threads 8] [--seed 0] [--dtype auto]
        [--out benchmarks/results/serving.md]

The problems are ``--problems`` lines drawn with ``--seed`` from the lines after the first
100 (bench_cli's eval draw); each annotated step is one prompt, with the graph's atomic
prompt and answer cap. Calls with an adapter answer the first ``--adapter-problems``
problems' steps only: vLLM's CPU LoRA kernels are slow. The adapter has the store's shape
(rank 16 on every projection) with random weights: it is here for its cost, not its
answers. The server is started by this script (``sage-agent serve``'s settings, vLLM from
``$SAGE_VLLM_PYTHON``); nothing else runs meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import results_header, write_results

from sage_agent.chat import ChatSage
from sage_agent.errors import MalformedTask
from sage_agent.serving import ServerSpec, VLLMEngine, VLLMServer, served_weights
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT, steps_from_gsm8k
from sage_agent.training.adapter_files import save_adapter

RESULTS = Path(__file__).resolve().parent / "results"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def step_prompts(lines: list[str]) -> list[str]:
    prompts = []
    for i, line in enumerate(lines):
        try:
            steps = steps_from_gsm8k(json.loads(line), task_id=str(i))
        except MalformedTask:
            continue
        prompts += [ATOMIC_PROMPT.format(expression=s.expression) for s in steps if s.expression]
    return prompts


def random_adapter(chat: ChatSage, folder: Path) -> Path:
    """A rank-16 LoRA on every projection with random weights, in peft's format."""
    from peft import LoraConfig

    config = LoraConfig(
        r=16, lora_alpha=16, target_modules=list(PROJECTIONS), init_lora_weights=False
    )
    chat.add_adapter("bench", config)
    return save_adapter(chat, "bench", folder)


def timed(
    answer: Callable[[str, str | None], Any], adapter: str | None, prompts: list[str], threads: int
) -> tuple[list, float]:
    """Every prompt answered with ``adapter``, from ``threads`` threads; the wall seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(lambda prompt: answer(prompt, adapter), prompts))
    return answers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--adapter-problems", type=int, default=25)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.md")
    args = parser.parse_args()
    lines = [line for line in args.data.read_text().splitlines() if line.strip()]
    drawn = random.Random(args.seed).sample(lines[100:], args.problems)
    prompts = step_prompts(drawn)
    adapter_prompts = step_prompts(drawn[: args.adapter_problems])

    chat = ChatSage(max_tokens=ANSWER_MAX_TOKENS, top_logprobs=2)
    rows, base_answers = [], {}
    with tempfile.TemporaryDirectory() as folder:
        adapter = random_adapter(chat, Path(folder) / "adapter")
        spec = ServerSpec(served_weights(), "smollm2", port=8765, dtype=args.dtype)
        with (Path(folder) / "vllm.log").open("w") as log:
            started = time.perf_counter()
            server = VLLMServer(spec, log).start()
            startup = time.perf_counter() - started
        try:
            engine = VLLMEngine(server.url)
            engine.load_adapter(adapter, "bench")
            answerers = {
                "in process": lambda p, a: chat.invoke(p, adapter=a),
                "vLLM server": lambda p, a: engine.invoke(
                    p, adapter=a, max_tokens=ANSWER_MAX_TOKENS
                ),
            }
            for where, answer in answerers.items():
                for adapter_name, asked in ((None, prompts), ("bench", adapter_prompts)):
                    for threads in (1, args.threads):
                        print(f"{where}, {adapter_name}, {threads} threads", file=sys.stderr)
                        answers, seconds = timed(answer, adapter_name, asked, threads)
                        tokens = sum(m.usage_metadata["output_tokens"] for m in answers)
                        row = (where, adapter_name is not None, threads, len(asked))
                        rows.append((*row, seconds, tokens))
                        if adapter_name is None and threads == 1:
                            base_answers[where] = answers
        finally:
            server.stop()

    local, served = base_answers["in process"], base_answers["vLLM server"]
    same = sum(a.text == b.text for a, b in zip(local, served, strict=True))
    differences = []
    for a, b in zip(local, served, strict=True):
        here, there = (m.response_metadata["logprobs"]["content"] for m in (a, b))
        for x, y in zip(here, there, strict=False):  # up to the first token that differs
            if x["token"] != y["token"]:
                break
            differences.append(abs(x["logprob"] - y["logprob"]))
    dtype = spec.command()[spec.command().index("--dtype") + 1]
    out = results_header(
        "Answering in process and through a vLLM server",
        f"{args.problems} GSM8K problems drawn with seed {args.seed} from the lines after the "
        f"first 100: {len(prompts)} annotated steps, each one prompt (the graph's atomic "
        f"prompt, at most {ANSWER_MAX_TOKENS} new tokens, greedy). With an adapter: the steps "
        f"of the first {args.adapter_problems} problems ({len(adapter_prompts)} prompts), a "
        "rank-16 LoRA on every projection with random weights. In process: ChatSage (float32, "
        f"one lock around generation). Server: vLLM {_vllm_version()} CPU build on the same "
        f"machine, {dtype}, started in {startup:.0f} s; VLLMEngine (ChatOpenAI) calls.",
    )
    out += [
        "| answered | adapter | threads | prompts | wall s | s / prompt | new tokens "
        "| tokens / s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for where, with_adapter, threads, n, seconds, tokens in rows:
        out.append(
            f"| {where} | {'yes' if with_adapter else 'no'} | {threads} | {n} | {seconds:.1f} | "
            f"{seconds / n:.2f} | {tokens} | {tokens / seconds:.1f} |"
        )
    out += [
        "",
        f"Agreement of the base model's answers ({dtype} server against float32 in process): "
        f"the same text on {same} of {len(local)} prompts ({same / len(local):.1%}); token "
        f"log-probabilities along the common tokens differ by {statistics.mean(differences):.4f} "
        f"nats on average, {max(differences):.4f} at most ({len(differences)} tokens).",
        "",
    ]
    write_results(args.out, out)


def _vllm_version() -> str:
    import subprocess

    python = os.environ.get("SAGE_VLLM_PYTHON", sys.executable)
    done = subprocess.run(
        [python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True
    )
    return done.stdout.strip() or "(version unknown)"


if __name__ == "__main__":
    main()
