"""The Trigger: an anomaly score for each answer, and the pass / fail decision.

Per answer (paper section 3.1):

* s1 = clip(LM / LM_max, 0, 1), LM the mean logits margin of the generated tokens
* s2 = sentence BLEU-4 (sacrebleu) / 100
* s3 = ROUGE-L F1 (rouge-score)
* s4 = cosine of the embeddings of prediction and reference

AS = sum_i w_i (1 - s_i); AS >= threshold is a failure. A missing s1 (no margin given)
drops out and the other weights are renormalised. For numeric answers the numbers
decide: a numeric mismatch always fails and a match never does. A task family's judge
(a label, an option letter, a normalised string; ``sage_agent.tasks.families``) decides
likewise where one is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from langchain_core.embeddings import Embeddings
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from sage_agent.embeddings import LazyDefaultEmbeddings
from sage_agent.errors import ConfigError, InvalidInput
from sage_agent.records import Judge
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.scoring.verifier import Verifier

METRICS = ("lm", "bleu", "rouge_l", "cosine")


@dataclass
class TriggerConfig:
    """Thresholds and weights of the Trigger; defaults are the paper's."""

    weights: tuple[float, float, float, float] = field(
        default=(0.25, 0.25, 0.25, 0.25),
        metadata={"help": "Weights of (lm, bleu, rouge_l, cosine) in the anomaly score."},
    )
    threshold: float = field(
        default=0.5, metadata={"help": "An anomaly score at or above this is a failure."}
    )
    lm_max: float = field(
        default=5.0, metadata={"help": "Logits margin that counts as full confidence (s1 = 1)."}
    )
    damping_percentiles: tuple[float, float] = field(
        default=(5.0, 95.0),
        metadata={"help": "Percentile band of in-distribution cosine set by calibrate()."},
    )
    damping_factor: float = field(
        default=0.5,
        metadata={"help": "Multiplies the anomaly score when the cosine lies inside the band."},
    )
    numeric: Literal["auto", "always", "never"] = field(
        default="auto",
        metadata={
            "help": "auto: numbers decide when the reference is numeric; always: the "
            "reference must be numeric; never: only the anomaly score decides."
        },
    )
    max_chars: int = field(
        default=4000,
        metadata={"help": "Longer texts are cut to this many characters before scoring."},
    )

    def __post_init__(self) -> None:
        if len(self.weights) != len(METRICS) or any(w < 0 for w in self.weights):
            raise ConfigError(
                f"weights must be {len(METRICS)} non-negative numbers: {self.weights}"
            )
        if sum(self.weights) <= 0:
            raise ConfigError("at least one weight must be positive")
        if self.lm_max <= 0:
            raise ConfigError(f"lm_max must be positive, not {self.lm_max}")
        low, high = self.damping_percentiles
        if not 0 <= low < high <= 100:
            raise ConfigError(
                f"damping_percentiles must satisfy 0 <= low < high <= 100: {low, high}"
            )
        if self.numeric not in ("auto", "always", "never"):
            raise ConfigError(f"numeric must be auto, always or never, not {self.numeric!r}")


@dataclass
class TriggerResult:
    """One scored answer. ``metrics`` keeps every value, for traces.

    mode is "reference" (scored against a reference or a verifier's answer) or
    "confidence" (no reference: the score is 1 - s1 alone, a weaker signal).
    numeric_match is None when the numbers did not decide.
    """

    anomaly_score: float
    failed: bool
    metrics: dict[str, float | None]
    mode: Literal["reference", "confidence"]
    reference: str | None = None
    numeric_match: bool | None = None
    damped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class Trigger:
    """Scores answers; see the module docstring for the formula.

    ``embeddings`` defaults to the embedded all-MiniLM-L6-v2 (loaded on first use).
    ``verifier`` computes a reference from a step's expression when no reference is given
    (e.g. :func:`sage_agent.arithmetic_verifier`).
    """

    def __init__(
        self,
        config: TriggerConfig | None = None,
        embeddings: Embeddings | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.config = config or TriggerConfig()
        self.verifier = verifier
        self.embeddings: Embeddings = embeddings or LazyDefaultEmbeddings()
        self.band: tuple[float, float] | None = None
        self._bleu = BLEU(effective_order=True)
        self._rouge = RougeScorer(["rougeL"])

    def score(
        self,
        prediction: str,
        reference: str | float | None = None,
        *,
        expression: str | None = None,
        logits_margin: float | Sequence[float] | None = None,
        judge: Judge | None = None,
    ) -> TriggerResult:
        """Score one answer. ``logits_margin`` is the mean margin or the per-token list
        (ChatSage puts both in ``response_metadata``). ``judge`` decides pass or fail
        against the reference instead of the numbers and the anomaly score."""
        return self.score_batch(
            [prediction],
            [reference],
            expressions=[expression],
            logits_margins=[logits_margin],
            judge=judge,
        )[0]

    def score_batch(
        self,
        predictions: Sequence[str],
        references: Sequence[str | float | None] | None = None,
        *,
        expressions: Sequence[str | None] | None = None,
        logits_margins: Sequence[float | Sequence[float] | None] | None = None,
        judge: Judge | None = None,
    ) -> list[TriggerResult]:
        """Score many answers with one embedding call (``judge``: see ``score``)."""
        n = len(predictions)
        references = _per_item(references, n, "references")
        expressions = _per_item(expressions, n, "expressions")
        margins = [_mean_margin(m) for m in _per_item(logits_margins, n, "logits_margins")]
        cleaned = [self._clip(_as_text(p, "prediction")) for p in predictions]
        resolved = [
            self._resolve_reference(r, e) for r, e in zip(references, expressions, strict=True)
        ]

        scored = [i for i, r in enumerate(resolved) if r is not None]
        cosines = self._cosines([cleaned[i] for i in scored], [resolved[i] for i in scored])
        cosine_of = dict(zip(scored, cosines, strict=True))

        results = []
        for i in range(n):
            if resolved[i] is None:
                results.append(self._confidence_only(margins[i]))
            else:
                result = self._against_reference(cleaned[i], resolved[i], margins[i], cosine_of[i])
                if judge is not None:
                    result.failed = not judge(predictions[i], resolved[i])
                    result.numeric_match = None
                results.append(result)
        return results

    def calibrate(self, in_distribution_pairs: Sequence[tuple[str, str]]) -> tuple[float, float]:
        """Set the damping band from (prediction, reference) pairs of answers known to be
        right: the configured percentiles of their embedding cosine. Returns the band."""
        if len(in_distribution_pairs) < 5:
            raise InvalidInput(
                f"calibrate needs 5 or more in-distribution pairs, got {len(in_distribution_pairs)}"
            )
        predictions = [self._clip(_as_text(p, "prediction")) for p, _ in in_distribution_pairs]
        references = [self._clip(_as_text(r, "reference")) for _, r in in_distribution_pairs]
        cosines = self._cosines(predictions, references)
        low, high = np.percentile(cosines, self.config.damping_percentiles)
        self.band = (float(low), float(high))
        return self.band

    # internals

    def _clip(self, text: str) -> str:
        return text[: self.config.max_chars]

    def _resolve_reference(
        self, reference: str | float | None, expression: str | None
    ) -> str | None:
        if reference is None and expression is not None and self.verifier is not None:
            reference = self.verifier(expression)
        if reference is None:
            if self.config.numeric == "always":
                raise InvalidInput("numeric mode 'always' needs a reference or a verifier")
            return None
        if isinstance(reference, int | float):
            if not math.isfinite(reference):
                raise InvalidInput(f"reference must be a finite number, not {reference}")
            reference = str(reference)
        if not reference.strip():
            raise InvalidInput("reference is empty; pass None for a confidence-only score")
        if self.config.numeric == "always" and parse_number(reference) is None:
            raise InvalidInput(
                f"reference {reference[:80]!r} is not numeric (numeric mode 'always')"
            )
        return self._clip(reference)

    def _cosines(self, predictions: list[str], references: list[str]) -> list[float]:
        if not predictions:
            return []
        # Empty predictions embed to something arbitrary; they share nothing with the
        # reference, so their cosine is defined as 0 and they are not embedded.
        live = [i for i, p in enumerate(predictions) if p.strip()]
        cosines = [0.0] * len(predictions)
        if live:
            texts = [predictions[i] for i in live] + [references[i] for i in live]
            vectors = np.asarray(self.embeddings.embed_documents(texts), dtype=np.float64)
            norms = np.linalg.norm(vectors, axis=1)
            norms[norms == 0] = 1.0
            unit = vectors / norms[:, None]
            for k, i in enumerate(live):
                cosines[i] = float(np.clip(unit[k] @ unit[k + len(live)], -1.0, 1.0))
        return cosines

    def _lm_score(self, margin: float | None) -> float | None:
        return None if margin is None else float(np.clip(margin / self.config.lm_max, 0.0, 1.0))

    def _confidence_only(self, margin: float | None) -> TriggerResult:
        if margin is None:
            raise InvalidInput(
                "no reference, no verifier and no logits margin: nothing to score against"
            )
        s1 = self._lm_score(margin)
        score = 1.0 - s1
        return TriggerResult(
            anomaly_score=score,
            failed=score >= self.config.threshold,
            metrics={
                "lm": s1,
                "bleu": None,
                "rouge_l": None,
                "cosine": None,
                "logits_margin": margin,
            },
            mode="confidence",
        )

    def _against_reference(
        self, prediction: str, reference: str, margin: float | None, cosine: float
    ) -> TriggerResult:
        if prediction.strip():
            bleu = self._sentence_bleu(prediction, reference)
            rouge_l = self._rouge_l(prediction, reference)
        else:
            bleu = rouge_l = 0.0
        similarity = {
            "lm": self._lm_score(margin),
            "bleu": bleu,
            "rouge_l": rouge_l,
            "cosine": max(cosine, 0.0),
        }
        present = [
            (w, similarity[m])
            for w, m in zip(self.config.weights, METRICS, strict=True)
            if similarity[m] is not None
        ]
        total_weight = sum(w for w, _ in present)
        score = sum(w * (1.0 - s) for w, s in present) / total_weight

        damped = self.band is not None and self.band[0] <= cosine <= self.band[1]
        if damped:
            score *= self.config.damping_factor

        failed = score >= self.config.threshold
        numeric_match = None
        predicted_number = reference_number = None
        if self.config.numeric != "never":
            reference_number = parse_number(reference)
            if reference_number is not None:
                predicted_number = parse_number(prediction)
                numeric_match = numbers_match(predicted_number, reference_number)
                failed = not numeric_match

        return TriggerResult(
            anomaly_score=float(score),
            failed=failed,
            metrics={
                **similarity,
                "raw_cosine": cosine,
                "logits_margin": margin,
                "prediction_number": predicted_number,
                "reference_number": reference_number,
            },
            mode="reference",
            reference=reference,
            numeric_match=numeric_match,
            damped=damped,
        )

    def _sentence_bleu(self, prediction: str, reference: str) -> float:
        return self._bleu.sentence_score(prediction, [reference]).score / 100.0

    def _rouge_l(self, prediction: str, reference: str) -> float:
        return self._rouge.score(reference, prediction)["rougeL"].fmeasure


def _per_item(values: Sequence | None, n: int, name: str) -> list:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise InvalidInput(f"{name} has {len(values)} items for {n} predictions")
    return list(values)


def _as_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _mean_margin(margin: float | Sequence[float] | None) -> float | None:
    if margin is None:
        return None
    if isinstance(margin, int | float):
        value = float(margin)
    else:
        values = [float(m) for m in margin]
        if not values:
            return None
        value = sum(values) / len(values)
    if not math.isfinite(value):
        raise InvalidInput(f"logits_margin must be finite, not {value}")
    return value
