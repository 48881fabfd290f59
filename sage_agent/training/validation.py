"""How good an adapter is on (prompt, answer) pairs, two ways.

``evaluate`` generates: greedy answers, judged against the references (numbers compared
as numbers), what the adapter will really write. ``teacher_forced`` reads: one batched
forward over prompt + reference gives the answer-token loss and, per pair, whether every
answer token (and the end of the turn) is the model's most likely next token, which is
exactly when greedy decoding writes the reference. It costs one forward pass where
generation costs one per answer token, so the search ranks its trials with it and
generates only to confirm the adapters it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from langchain_core.messages import AIMessage

from sage_agent.chat import ChatSage
from sage_agent.errors import InvalidInput
from sage_agent.records import Judge, TrainingPair
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS
from sage_agent.training.batches import answer_logits, collate, encode_pairs


@dataclass(frozen=True)
class Evaluation:
    exact_match: float
    loss: float
    messages: list[AIMessage]
    """The generated answers, with ChatSage's metadata (log-probabilities)."""
    correct: tuple[bool, ...]
    """Per pair: the judge took its answer."""

    @property
    def answers(self) -> list[str]:
        return [m.text for m in self.messages]


@dataclass(frozen=True)
class TeacherForced:
    exact_match: float
    """Share of pairs whose whole answer is the greedy continuation of their prompt."""
    loss: float
    """Mean cross-entropy per answer token."""
    exact: tuple[bool, ...]
    """Per pair: greedy decoding writes its answer."""


def teacher_forced(
    chat: ChatSage, adapter: str | None, pairs: Sequence[TrainingPair], *, batch_size: int = 16
) -> TeacherForced:
    """Teacher-forced exact match and answer loss of ``pairs`` with ``adapter`` active
    (None: the base model); see the module docstring."""
    if not pairs:
        raise InvalidInput("no evaluation pairs")
    encoded = encode_pairs(chat, pairs)
    exact: list[bool] = []
    total_loss, total_tokens = 0.0, 0
    # The lock first: the adapter is switched on the shared model, which no other thread
    # may switch (or generate with) until this pass is done.
    with chat.lock, chat.using_adapter(adapter), torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], chat)
            logits, targets, where = answer_logits(chat.hf_model, batch)
            hits = logits.argmax(-1) == targets
            losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            total_loss += float(losses)
            total_tokens += len(targets)
            # Answer tokens arrive row by row (boolean indexing keeps row-major order).
            per_row = where.sum(dim=1).tolist()
            for row_hits in torch.split(hits, per_row):
                exact.append(bool(row_hits.all()))
    return TeacherForced(
        exact_match=sum(exact) / len(exact), loss=total_loss / total_tokens, exact=tuple(exact)
    )


def evaluate(
    chat: ChatSage,
    adapter: str | None,
    pairs: Sequence[TrainingPair],
    *,
    max_tokens: int | None = None,
    judge: Judge | None = None,
) -> Evaluation:
    """Exact match of greedy answers and the teacher-forced answer loss, with ``adapter``
    active (None: the base model). Answers may run to ``max_tokens`` (None:
    ANSWER_MAX_TOKENS, an atomic step's); ``judge(answer, reference)`` says whether an
    answer is right (None: ``same_answer``)."""
    if not pairs:
        raise InvalidInput("no evaluation pairs")
    messages = generate(chat, adapter, [p.prompt for p in pairs], max_tokens=max_tokens)
    loss = teacher_forced(chat, adapter, pairs).loss
    correct = judge_answers(messages, pairs, judge)
    return Evaluation(
        exact_match=sum(correct) / len(pairs), loss=loss, messages=messages, correct=correct
    )


def generate(
    chat: ChatSage,
    adapter: str | None,
    prompts: Sequence[str],
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    stop_repeated_line: bool = False,
) -> list[AIMessage]:
    """Greedy answers to ``prompts`` with ``adapter`` active (None: the base model), each
    at most ``max_tokens`` long (None: ANSWER_MAX_TOKENS) and cut at the first of ``stop``
    (and, with ``stop_repeated_line``, before a line that repeats an earlier one)."""
    options: dict[str, Any] = {"max_tokens": max_tokens or ANSWER_MAX_TOKENS}
    if stop_repeated_line:
        options["stop_repeated_line"] = True
    with chat.using_adapter(adapter):
        runnable = chat.bind(**options, stop=list(stop)) if stop else chat.bind(**options)
        return runnable.batch(list(prompts))


def judge_answers(
    messages: Sequence[AIMessage], pairs: Sequence[TrainingPair], judge: Judge | None = None
) -> tuple[bool, ...]:
    """Per answer, whether ``judge(answer, reference)`` takes it (None: ``same_answer``)."""
    judge = judge or same_answer
    return tuple(judge(m.text, p.answer) for m, p in zip(messages, pairs, strict=True))


def same_answer(prediction: str, reference: str) -> bool:
    """The numbers of an answer and its reference are equal (texts without one: equal)."""
    expected = parse_number(reference)
    if expected is None:
        return prediction.strip() == reference.strip()
    return numbers_match(parse_number(prediction), expected)
