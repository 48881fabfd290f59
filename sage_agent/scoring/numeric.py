"""Numbers in model answers, and the paper's math metrics (EM, MAE, MSE, NER)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sage_agent.errors import InvalidInput

# One number: optional sign and currency, digits with optional thousands commas,
# an optional decimal part, or a simple fraction "a/b".
# A match starts only at a sign, "$" or a digit, and the spaces around "$" have one way
# to match: model output is untrusted, and "\s*\$?\s*" tried at every space of a long run
# of spaces took seconds (cubic).
_NUMBER = re.compile(
    r"(?<![\w.])(?=[-\u2212+$\d.])(?P<sign>[-\u2212+]?)(?:\s*\$)?\s*"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
)


def parse_number(text: str | None) -> float | None:
    """The numeric answer in ``text``, or None when there is none.

    Handles thousands commas ("1,234"), currency ("$5"), percent ("50%" is 50, as GSM8K
    writes answers), decimals, simple fractions ("3/4"), negatives ("-7", "−7") and
    worked answers: after an "=" the first number following the last "=" is taken
    ("16-3-4 = 9" is 9); otherwise the last number in the text ("He has 19 pens." is 19).
    NaN and infinity are not numbers here.
    """
    if text is None:
        return None
    return _to_float(_answer_match(str(text)))


def _answer_match(text: str) -> re.Match[str] | None:
    """The match of the number parse_number reads in ``text``."""
    if "=" in text:
        start = text.rindex("=") + 1
        found = _NUMBER.search(text, start)
        if found:
            return found
    matches = list(_NUMBER.finditer(text))
    return matches[-1] if matches else None


def number_span(text: str) -> tuple[int, int] | None:
    """Where the number parse_number reads lies in ``text`` (its digits), or None."""
    found = _answer_match(text)
    return None if found is None else (found.start("num"), found.end())


def number_logprob(tokens: Sequence[dict]) -> float | None:
    """The log-probability the model gave the number parse_number reads from its answer
    (``span_logprob`` of ``number_span``); None when the answer holds no number.

    A sure answer scores near 0; prose and trailing chatter do not lower it, only doubt
    about the digits does, which is why it separates right from wrong answers better
    than the whole answer's log-probability.
    """
    return span_logprob(tokens, number_span)


def span_logprob(
    tokens: Sequence[dict], span_of: Callable[[str], tuple[int, int] | None]
) -> float | None:
    """The log-probability the model gave the part of its answer ``span_of`` finds (what
    the answer says: its number, its label): the sum over the tokens that overlap it.
    ``tokens`` are the OpenAI ``logprobs["content"]`` entries ChatSage reports (their
    ``token`` strings join to the answer). None when ``span_of`` finds nothing."""
    span = span_of("".join(t["token"] for t in tokens))
    if span is None:
        return None
    start, end = span
    total, position = 0.0, 0
    for token in tokens:
        following = position + len(token["token"])
        if position < end and following > start:
            total += token["logprob"]
        position = following
    return total


def mean_margin(metadata: Mapping[str, Any]) -> float | None:
    """The Trigger's confidence signal of an answer, from its ``response_metadata``:
    ChatSage's ``logits_margin_mean``, else (any chat model that reports OpenAI
    ``logprobs`` with ``top_logprobs`` >= 2: ChatOpenAI on a vLLM server) the mean over
    the answer's tokens of the top-1 minus top-2 log-probability. The two are the same
    number: a log-softmax shifts every logit of a step by the same amount. None when
    neither is reported."""
    if metadata.get("logits_margin_mean") is not None:
        return float(metadata["logits_margin_mean"])
    margins = logprob_margins((metadata.get("logprobs") or {}).get("content") or [])
    return sum(margins) / len(margins) if margins else None


def logprob_margins(tokens: Sequence[dict]) -> list[float]:
    """Per token of OpenAI ``logprobs["content"]``, its best alternative's log-probability
    minus the second best's (tokens reported with fewer than two alternatives are left
    out)."""
    margins = []
    for token in tokens:
        best = sorted((t["logprob"] for t in token.get("top_logprobs") or []), reverse=True)
        if len(best) >= 2:
            margins.append(best[0] - best[1])
    return margins


def _to_float(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    value = float(match["num"].replace(",", ""))
    if match["den"] is not None:
        denominator = float(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    if match["sign"] in ("-", "\u2212"):
        value = -value
    return value if math.isfinite(value) else None


def numbers_match(a: float | None, b: float | None) -> bool:
    """Equal up to float noise (relative 1e-6): 0.1 + 0.2 matches 0.3, 19 does not match 19.5."""
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def format_number(value: float) -> str:
    """A reference string for a computed value: integers without ".0", else up to 6 decimals."""
    if not math.isfinite(value):
        raise InvalidInput(f"cannot format a non-finite number: {value}")
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class MathMetrics:
    """The paper's metrics over a set of answers.

    em: exact match rate over all answers; mae / mse: mean absolute / squared error over
    the answers a number could be extracted from (None when there is none); ner: numeric
    extraction rate, the share of answers holding a number; n: answers scored.
    """

    em: float
    mae: float | None
    mse: float | None
    ner: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def math_metrics(predictions: Sequence[str], references: Sequence[str | float]) -> MathMetrics:
    """EM, MAE, MSE and NER of ``predictions`` against numeric ``references``."""
    if len(predictions) != len(references):
        raise InvalidInput(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up"
        )
    if not predictions:
        raise InvalidInput("no predictions to score")
    gold = []
    for i, reference in enumerate(references):
        value = reference if isinstance(reference, int | float) else parse_number(reference)
        if value is None or not math.isfinite(value):
            raise InvalidInput(f"reference {i} ({reference!r}) is not a finite number")
        gold.append(float(value))
    extracted = [parse_number(p) for p in predictions]
    hits = sum(numbers_match(p, g) for p, g in zip(extracted, gold, strict=True))
    errors = [p - g for p, g in zip(extracted, gold, strict=True) if p is not None]
    return MathMetrics(
        em=hits / len(gold),
        mae=sum(abs(e) for e in errors) / len(errors) if errors else None,
        mse=sum(e * e for e in errors) / len(errors) if errors else None,
        ner=len(errors) / len(gold),
        n=len(gold),
    )
