"""``sage-agent demo``: the embedded default, offline, on generated arithmetic problems.

The embedded SmolLM2-135M answers the atomic steps of seeded multi-step word problems,
and the Trigger scores every answer against the arithmetic verifier's reference.
"""

from __future__ import annotations

import time

from tqdm import tqdm

from sage_agent.chat_model import ChatSage
from sage_agent.numeric import math_metrics
from sage_agent.problems import generate_steps
from sage_agent.trigger import Trigger
from sage_agent.verifier import arithmetic_verifier

ATOMIC_PROMPT = "Compute {expression}. Reply with the number only."
"""The atomic-step prompt: on GSM8K atoms this wording beats a terse "a-b=" by far."""


def run_demo(problems: int = 12, seed: int = 0, batch_size: int = 16) -> int:
    started = time.perf_counter()
    expressions = [step.expression for step in generate_steps(problems, seed=seed)]
    print(f"sage-agent demo: {problems} generated problems, {len(expressions)} atomic steps")

    print("Loading the embedded SmolLM2-135M-Instruct ...", flush=True)
    chat = ChatSage(max_tokens=16, batch_size=batch_size)
    chat.hf_model  # noqa: B018 - load before the progress bar starts
    trigger = Trigger(verifier=arithmetic_verifier)

    answers = []
    with tqdm(total=len(expressions), desc="answering steps", unit="step") as bar:
        for start in range(0, len(expressions), batch_size):
            chunk = expressions[start : start + batch_size]
            answers += chat.batch([ATOMIC_PROMPT.format(expression=e) for e in chunk])
            bar.update(len(chunk))
    results = trigger.score_batch(
        [a.text for a in answers],
        expressions=expressions,
        logits_margins=[a.response_metadata["logits_margin_mean"] for a in answers],
    )

    print(f"\n{'step':<14} {'answer':<22} {'ref':>6} {'AS':>5} {'margin':>6}  trigger")
    for expression, answer, result in zip(expressions, answers, results, strict=True):
        shown = answer.text.replace("\n", " ")[:22]
        margin = result.metrics["logits_margin"]
        print(
            f"{expression:<14} {shown:<22} {result.reference:>6} {result.anomaly_score:5.2f} "
            f"{margin if margin is not None else float('nan'):6.2f}  "
            f"{'FAIL' if result.failed else 'pass'}"
        )
    metrics = math_metrics([a.text for a in answers], [r.reference for r in results])
    failures = sum(r.failed for r in results)
    print(
        f"\nstep EM {metrics.em:.1%}  NER {metrics.ner:.1%}  MAE {metrics.mae or 0:.2f}  "
        f"failures flagged by the Trigger: {failures}/{len(results)}  "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return 0
