"""LoRA Store benchmark: optimize() on one cluster of GSM8K failures, as the graph builds it.

    python benchmarks/bench_store.py --data ../shared/data/gsm8k/train.jsonl
        [--tag +] [--size 48] [--canaries 48] [--seed 0] [--max-trials 10] [--max-seconds 900]
        [--confirm-all] [--heldout 96] [--n-random 6] [--out benchmarks/results/store.md]

The embedded model answers GSM8K atoms of one operator signature; the first ``--size`` it
gets wrong become the cluster (text = the atomic prompt, payload = expression and
reference), and the ones it gets right become the tag's canaries (the regression gate).
Then one optimize() with the default StoreConfig (but ``--max-trials``, ``--max-seconds``
and ``--n-random``, the configurations of the first bracket): successive halving, trials
ranked teacher-forced, the kept ones confirmed by generation where their teacher-forced
bound does not decide (``--confirm-all``: every trial considered for keeping, which
measures how often the two verdicts agree).
Prints every trial (its rung, teacher-forced and generated validation EM, how often the
two verdicts agree) and the kept adapters (generated validation EM against the base
model's on the same split), the configurations evaluated and where the seconds went (each
phase's own seconds, the phases it calls taken out), the best kept adapter on the next
``--heldout`` atoms of the tag as the graph routes it, and writes benchmarks/results/store.md
(or ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from common import cluster_of, gsm8k_steps

from sage_agent import ChatSage, default_embeddings
from sage_agent.records import TrainingPair
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.store import LoRAStore, StoreConfig
from sage_agent.store import store as store_module
from sage_agent.store.recipe import Recipe
from sage_agent.store.registry import AdapterRecord, AdapterRegistry
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS, ATOMIC_PROMPT
from sage_agent.training.trainer import FrozenPrefix, LoRARun
from sage_agent.training.validation import generate

RESULTS = Path(__file__).parent / "results"

PHASES: dict[str, tuple[Any, str]] = {
    "the base model on validation and canaries (generated)": (LoRAStore, "_baseline"),
    "building the recipe (variants, rehearsal)": (store_module, "build_recipe"),
    "the frozen layers' output (computed once)": (FrozenPrefix, "hidden"),
    "tokenizing the training pairs": (FrozenPrefix, "__init__"),
    "adding each trial's adapter": (LoRARun, "__init__"),
    "training": (LoRARun, "train"),
    "ranking (teacher-forced validation)": (Recipe, "rank"),
    "confirming trials (generated validation; canaries when the bound fails)": (LoRAStore, "_keep"),
    "the canary gate (teacher-forced)": (Recipe, "gate_forced"),
    "routing all or unsure (teacher-forced canaries)": (store_module, "routes_all"),
    "saving and registering": (AdapterRegistry, "register"),
    "deleting trial adapters": (ChatSage, "delete_adapter"),
}


class PhaseClock:
    """Each phase's own wall seconds: a phase called inside another is taken out of the
    caller's (the confirmation's seconds are its generation, not the gate it calls)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._inner: list[float] = []

    def install(self) -> None:
        for phase, (owner, name) in PHASES.items():
            setattr(owner, name, self._timed(phase, getattr(owner, name)))

    def _timed(self, phase: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self._inner.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.seconds[phase] += spent - self._inner.pop()
                if self._inner:
                    self._inner[-1] += spent

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tag", default="+")
    parser.add_argument("--size", type=int, default=48, help="failures in the cluster")
    parser.add_argument("--canaries", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-trials", type=int, default=10, help="SearchConfig.max_trials")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="SearchConfig.max_seconds")
    parser.add_argument("--confirm-all", action="store_true", help="SearchConfig.confirm_all")
    parser.add_argument(
        "--heldout", type=int, default=96, help="later atoms of the tag the best adapter answers"
    )
    parser.add_argument(
        "--n-random",
        type=int,
        default=StoreConfig().search.n_random,
        help="SearchConfig.n_random: configurations in the first bracket",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "store.md", help="the results file")
    args = parser.parse_args()

    chat = ChatSage(max_tokens=ANSWER_MAX_TOKENS)
    embeddings = default_embeddings()
    failures: list[tuple[str, str, str]] = []
    canaries: list[TrainingPair] = []
    canary_expressions: list[str] = []
    steps = (s for s in gsm8k_steps(args.data, args.seed) if s.tag == args.tag)
    started = time.perf_counter()
    while len(failures) < args.size or len(canaries) < args.canaries:
        chunk = [next(steps) for _ in range(16)]
        prompts = [ATOMIC_PROMPT.format(expression=s.expression) for s in chunk]
        for step, prompt, message in zip(chunk, prompts, chat.batch(prompts), strict=True):
            right = _right(message.text, step.reference)
            if right and len(canaries) < args.canaries:
                canaries.append(TrainingPair(prompt, step.reference))
                canary_expressions.append(step.expression)
            elif not right and len(failures) < args.size:
                failures.append((prompt, step.expression, step.reference))
    print(
        f"cluster of {len(failures)} failures, {len(canaries)} canaries "
        f"({time.perf_counter() - started:.0f} s)"
    )

    vectors = np.asarray(embeddings.embed_documents([f[0] for f in failures]))
    cluster = cluster_of(1, args.tag, failures, vectors)
    config = StoreConfig().replace(
        seed=args.seed,
        max_trials=args.max_trials,
        max_seconds=args.max_seconds,
        confirm_all=args.confirm_all,
        n_random=args.n_random,
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = LoRAStore(Path(tmp) / "db.sqlite", Path(tmp) / "adapters", chat, config, embeddings)
        store.add_canary(canaries, tag=args.tag, expressions=canary_expressions)
        clock = PhaseClock()
        clock.install()
        started = time.perf_counter()
        kept = store.optimize(cluster)
        seconds = time.perf_counter() - started
        trials = sorted(store.registry.trials(), key=lambda t: t.number)
        heldout = [next(steps) for _ in range(args.heldout)]
        held = held_out_figures(store, kept[0] if kept else None, heldout) if heldout else ""

    lines = [
        f"| {t.number} | {_config(t.config)} | {t.rung} | {t.val_em:.1%} | {t.val_loss:.3f} | "
        f"{_percent(t.generated_em)} | {_percent(t.agreement)} | {_percent(t.canary_em)} | "
        f"{t.seconds or 0:.0f} | {t.outcome} |"
        for t in trials
    ]
    base = kept[0].base_val_em if kept else None
    summary = (
        f"kept {len(kept)} adapters in {seconds:.0f} s; best validation EM "
        f"{kept[0].val_em:.1%} (generated, or its teacher-forced lower bound) vs base {base:.1%}"
        if kept
        else f"kept nothing in {seconds:.0f} s"
    )
    confirmed = [t for t in trials if t.agreement is not None]
    training = sum(t.seconds or 0 for t in trials)
    last_rung = len(config.search.rungs) - 1
    summary += (
        f"; {len(trials)} configurations evaluated, {sum(t.rung == last_rung for t in trials)} "
        f"trained to the end; {training:.0f} s of training, {seconds - training:.0f} s of "
        "everything else (below)"
    )
    if confirmed:
        agree = sum(t.agreement for t in confirmed) / len(confirmed)
        summary += (
            f"; teacher-forced and generated verdicts agree on {agree:.1%} of validation "
            f"answers ({len(confirmed)} confirmed trials)"
        )
    clock.seconds["everything else (the search's own bookkeeping, logging)"] = seconds - sum(
        clock.seconds.values()
    )
    phases = [
        f"| {phase} | {spent:.1f} | {spent / seconds:.0%} |"
        for phase, spent in sorted(clock.seconds.items(), key=lambda item: -item[1])
    ]
    print("\n".join(lines))
    print("\n".join(phases))
    print(summary)
    print(held)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# LoRA Store benchmark\n\nCommand: `{command}`\n\nMachine: {os.cpu_count()} CPU "
        f"cores. Cluster: the first {len(failures)} GSM8K atoms with operator signature "
        f'`{args.tag}` that the embedded SmolLM2-135M answers wrong ("{ATOMIC_PROMPT}"); '
        f"canaries: {len(canaries)} it answers right. Default StoreConfig with "
        f"max_trials {args.max_trials}, max_seconds {args.max_seconds:.0f}, confirm_all "
        f"{args.confirm_all}, n_random {args.n_random}, rungs "
        f"{config.search.rungs} (validation: the held-out quarter of the cluster plus "
        "verifier-labelled variants of it).\n\n"
        f"{summary}.\n\n{held}\n\n"
        "| trial | rank, alpha, lr, dropout | rung | val EM (teacher-forced) | "
        "val loss | val EM (generated) | verdicts agree | canary EM | seconds | outcome |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        "Where the seconds of optimize() went (each phase's own seconds):\n\n"
        "| phase | seconds | share |\n|---|---|---|\n" + "\n".join(phases) + "\n"
    )
    print(f"written to {args.out}")


def held_out_figures(store: LoRAStore, best: AdapterRecord | None, atoms: list) -> str:
    """The best kept adapter on later atoms of the tag, as the adaptation policy routes it
    (every atom when it routes all, else those whose base answer is unsure), against the base
    model: a figure of the adapter's quality less noisy than its validation split's."""
    prompts = [ATOMIC_PROMPT.format(expression=a.expression) for a in atoms]
    base = generate(store.model, None, prompts)
    base_right = [_right(m.text, a.reference) for m, a in zip(base, atoms, strict=True)]
    line = f"Held out: {len(atoms)} later atoms of the tag, base model {np.mean(base_right):.1%}"
    if best is None:
        return line + " (no adapter kept)."
    routed = store.policy.answered_by_adapter(best.route_all, base)
    name = store.load(best.id)
    answers = generate(store.model, name, [prompts[i] for i in routed])
    right = list(base_right)
    for i, message in zip(routed, answers, strict=True):
        right[i] = _right(message.text, atoms[i].reference)
    fixed = sum(r and not b for r, b in zip(right, base_right, strict=True))
    broken = sum(b and not r for r, b in zip(right, base_right, strict=True))
    return (
        f"{line}, best adapter as routed {np.mean(right):.1%} ({len(routed)} routed, "
        f"route_all {best.route_all}; {fixed} fixed, {broken} broken)."
    )


def _right(text: str, reference: str) -> bool:
    return numbers_match(parse_number(text), parse_number(reference))


def _config(config: dict) -> str:
    rate = config["learning_rate"]
    return f"{config['rank']}, {config['alpha']:g}, {rate:.2g}, {config['dropout']:g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
