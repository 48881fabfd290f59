"""PubMedQA (Jin et al. 2019), the expert-labelled PQA-L: a question over an abstract's
sections, answered yes, no or maybe (its ``final_decision``). No item can be made with an
exact label, so a cluster trains on its own failures."""

from __future__ import annotations

from typing import Any

from sage_agent.tasks.families.base import TaskFamily

MAX_CONTEXT_CHARS = 2_400
"""The abstract is cut to this many characters (about 500 SmolLM2 tokens): a prompt of
the whole of a long abstract costs more to train and rank than its last sections add."""


def pubmedqa_fields(record: dict[str, Any]) -> tuple[str, str]:
    contexts = record["contexts"]
    if isinstance(contexts, dict):  # the original JSON's {"contexts": [...]} nesting
        contexts = contexts["contexts"]
    context = " ".join(str(c).strip() for c in contexts)[:MAX_CONTEXT_CHARS]
    return f"Context: {context}\nQuestion: {record['question']}", record["final_decision"]


PUBMEDQA = TaskFamily(
    "pubmedqa",
    "label",
    "Answer yes, no or maybe.",
    pubmedqa_fields,
    labels=("yes", "no", "maybe"),
    max_tokens=8,
)
