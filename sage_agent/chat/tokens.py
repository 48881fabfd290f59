"""Per-token statistics of a generation: log-probabilities in OpenAI's shape and the
logits margin (top-1 minus top-2 raw logit), the Trigger's confidence signal; and where
a generation ends (stop sequences, a repeated line)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TokenStat:
    logprob: float
    margin: float
    top: tuple[tuple[int, float], ...]

    def openai(self, piece: str, tokenizer: Any) -> dict[str, Any]:
        return {
            "token": piece,
            "logprob": self.logprob,
            "bytes": list(piece.encode("utf-8")),
            "top_logprobs": [
                {
                    "token": (alt := tokenizer.decode([token_id], skip_special_tokens=False)),
                    "logprob": logprob,
                    "bytes": list(alt.encode("utf-8")),
                }
                for token_id, logprob in self.top
            ],
        }


def token_stats(
    step_logits: Sequence[torch.Tensor], generated: torch.Tensor, top_logprobs: int
) -> list[list[TokenStat]]:
    """Per step and row: the chosen token's log-probability (softmax of the raw logits),
    the margin top-1 minus top-2 raw logit, and the top alternatives."""
    stats = []
    k = max(2, top_logprobs)
    for t, logits in enumerate(step_logits):
        logits = logits.float()
        top = logits.topk(k, dim=-1)
        normaliser = logits.logsumexp(dim=-1)
        chosen = logits.gather(1, generated[:, t : t + 1]).squeeze(1) - normaliser
        margin = top.values[:, 0] - top.values[:, 1]
        top_lp = top.values[:, :top_logprobs] - normaliser[:, None]
        stats.append(
            [
                TokenStat(
                    logprob=float(chosen[row]),
                    margin=float(margin[row]),
                    top=tuple(
                        zip(
                            top.indices[row, :top_logprobs].tolist(),
                            top_lp[row].tolist(),
                            strict=True,
                        )
                    ),
                )
                for row in range(logits.shape[0])
            ]
        )
    return stats


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [p for p in (text.find(s) for s in stops) if p >= 0]
    return min(positions) if positions else None


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•])\s*")


def repeated_line(text: str) -> int | None:
    """Where the first complete line that repeats an earlier one starts, list markers and
    spaces aside ("3. 75 + 1 = 76" repeats "1. 75 + 1 = 76"); None when none does. A line
    is complete once its newline is written."""
    seen: set[str] = set()
    position = 0
    for line in text.split("\n")[:-1]:
        key = _LIST_MARKER.sub("", line).strip()
        if key in seen:
            return position
        if key:
            seen.add(key)
        position += len(line) + 1
    return None


def answer_end(text: str, stops: Sequence[str], stop_repeated_line: bool) -> int | None:
    """Where an answer is cut: its first stop sequence or, with ``stop_repeated_line``, its
    first repeated line, whichever comes first (None: neither)."""
    cuts = [first_stop(text, stops), repeated_line(text) if stop_repeated_line else None]
    found = [cut for cut in cuts if cut is not None]
    return min(found) if found else None


def repeated_line_stop(tokenizer: Any, prompt_length: int) -> Any:
    """transformers ``StoppingCriteria`` that end a row once its generation (the tokens
    after ``prompt_length``) holds a repeated line: a small model that loops writes the
    same lines to its token cap, and those tokens are cut from the answer anyway."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RepeatedLine(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            done = [
                "\n" in tokenizer.decode(row[-1:])
                and repeated_line(tokenizer.decode(row[prompt_length:], skip_special_tokens=True))
                is not None
                for row in input_ids
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([RepeatedLine()])
