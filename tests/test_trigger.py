"""The Trigger's formula, numeric override, damping, verifier and bad input."""

from __future__ import annotations

import math

import pytest

from sage_agent import Trigger, TriggerConfig, arithmetic_verifier


@pytest.fixture
def trigger(bow_embeddings) -> Trigger:
    return Trigger(embeddings=bow_embeddings)


def test_identical_text_scores_only_the_confidence_term(trigger: Trigger) -> None:
    result = trigger.score("the cat sat", "the cat sat", logits_margin=2.0)
    assert result.metrics["bleu"] == pytest.approx(1.0)
    assert result.metrics["rouge_l"] == pytest.approx(1.0)
    assert result.metrics["cosine"] == pytest.approx(1.0)
    assert result.metrics["lm"] == pytest.approx(0.4)  # 2.0 / LM_max 5.0
    assert result.anomaly_score == pytest.approx(0.25 * 0.6)
    assert not result.failed and result.mode == "reference" and result.numeric_match is None


def test_unrelated_text_fails(trigger: Trigger) -> None:
    result = trigger.score("a dog ran", "the cat sat on the mat", logits_margin=5.0)
    # lm is 1 (confident), the three similarities are 0: AS = 0.75.
    assert result.anomaly_score == pytest.approx(0.75)
    assert result.failed


def test_margin_is_clipped_and_per_token_lists_are_averaged(trigger: Trigger) -> None:
    assert trigger.score("a", "a", logits_margin=50.0).metrics["lm"] == 1.0
    assert trigger.score("a", "a", logits_margin=-1.0).metrics["lm"] == 0.0
    assert trigger.score("a", "a", logits_margin=[1.0, 3.0]).metrics["logits_margin"] == 2.0


def test_missing_margin_renormalises_the_weights(trigger: Trigger) -> None:
    result = trigger.score("a dog ran", "the cat sat")
    assert result.metrics["lm"] is None
    assert result.anomaly_score == pytest.approx(1.0)


def test_weights_and_threshold_come_from_the_config(bow_embeddings) -> None:
    only_bleu = Trigger(TriggerConfig(weights=(0, 1, 0, 0), threshold=0.9), bow_embeddings)
    result = only_bleu.score("the cat sat on a mat", "the cat sat on the mat", logits_margin=0.0)
    assert result.anomaly_score == pytest.approx(1 - result.metrics["bleu"])
    assert result.failed == (result.anomaly_score >= 0.9)


def test_numbers_decide_for_numeric_references(trigger: Trigger) -> None:
    right = trigger.score("16-3-4 = 9", "9", logits_margin=0.0)
    assert right.numeric_match and not right.failed
    assert right.anomaly_score >= 0.5  # the blend alone would have failed it
    wrong = trigger.score("19", "18", logits_margin=5.0)
    assert wrong.numeric_match is False and wrong.failed
    assert wrong.metrics["prediction_number"] == 19 and wrong.metrics["reference_number"] == 18


def test_numeric_never_lets_the_blend_decide(bow_embeddings) -> None:
    trigger = Trigger(TriggerConfig(numeric="never"), bow_embeddings)
    result = trigger.score("16-3-4 = 9", "9", logits_margin=0.0)
    assert result.numeric_match is None and result.failed


def test_verifier_supplies_the_reference(bow_embeddings) -> None:
    trigger = Trigger(embeddings=bow_embeddings, verifier=arithmetic_verifier)
    result = trigger.score("24", expression="4*6")
    assert result.reference == "24" and not result.failed
    assert trigger.score("25", expression="4*6").failed


def test_confidence_only_without_reference(trigger: Trigger) -> None:
    sure = trigger.score("anything", logits_margin=4.5)
    unsure = trigger.score("anything", logits_margin=0.5)
    assert sure.mode == unsure.mode == "confidence"
    assert sure.anomaly_score == pytest.approx(0.1) and not sure.failed
    assert unsure.anomaly_score == pytest.approx(0.9) and unsure.failed
    assert sure.metrics["bleu"] is None


def test_damping_after_calibration(trigger: Trigger) -> None:
    pairs = [
        ("the cat sat", "the cat sat on the mat"),
        ("one two", "one two three"),
        ("red blue", "red blue green"),
        ("a b c", "a b c d"),
        ("x y", "x y z w"),
    ]
    low, high = trigger.calibrate(pairs)
    assert 0 < low < high <= 1
    # The pair with the median cosine lies inside the 5th-95th percentile band.
    cosines = [trigger.score(p, r).metrics["raw_cosine"] for p, r in pairs]
    median_pair = pairs[sorted(range(5), key=cosines.__getitem__)[2]]
    undamped = Trigger(embeddings=trigger.embeddings).score(*median_pair)
    damped = trigger.score(*median_pair)
    assert damped.damped and not undamped.damped
    assert damped.anomaly_score == pytest.approx(undamped.anomaly_score * 0.5)
    assert not trigger.score("zzz", "the cat sat on the mat").damped


def test_batch_equals_single_scores(trigger: Trigger) -> None:
    predictions = ["5", "the cat", "", "7"]
    references = ["5", "the cat sat", "3", None]
    margins = [1.0, 2.0, 3.0, 4.0]
    batch = trigger.score_batch(predictions, references, logits_margins=margins)
    singles = [
        trigger.score(p, r, logits_margin=m)
        for p, r, m in zip(predictions, references, margins, strict=True)
    ]
    assert [b.to_dict() for b in batch] == [s.to_dict() for s in singles]


def test_empty_prediction_is_a_defined_failure(trigger: Trigger) -> None:
    for empty in ("", "   \n"):
        result = trigger.score(empty, "19", logits_margin=1.0)
        assert result.failed and result.metrics["cosine"] == 0.0 and result.metrics["bleu"] == 0.0
        assert math.isfinite(result.anomaly_score)
    text = trigger.score("", "the cat sat", logits_margin=1.0)
    assert text.failed


def test_long_strings_are_cut(trigger: Trigger) -> None:
    long = "pens " * 100_000
    result = trigger.score(long, long, logits_margin=1.0)
    assert result.metrics["bleu"] == pytest.approx(1.0)
    assert len(result.reference) == TriggerConfig().max_chars


def test_nan_and_inf_predictions_are_no_numbers(trigger: Trigger) -> None:
    for bad in ("nan", "inf", "-inf"):
        result = trigger.score(bad, "3", logits_margin=1.0)
        assert result.failed and result.metrics["prediction_number"] is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prediction": "1", "reference": ""}, ValueError, "reference is empty"),
        ({"prediction": "1", "reference": "  "}, ValueError, "reference is empty"),
        ({"prediction": "1", "reference": float("nan")}, ValueError, "finite"),
        ({"prediction": "1", "reference": float("inf")}, ValueError, "finite"),
        ({"prediction": "1"}, ValueError, "nothing to score against"),
        ({"prediction": None, "reference": "1"}, TypeError, "prediction must be a string"),
        (
            {"prediction": "1", "reference": "1", "logits_margin": float("nan")},
            ValueError,
            "logits_margin must be finite",
        ),
    ],
)
def test_bad_input(trigger: Trigger, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        trigger.score(**kwargs)


def test_numeric_always_needs_a_numeric_reference(bow_embeddings) -> None:
    trigger = Trigger(TriggerConfig(numeric="always"), bow_embeddings)
    with pytest.raises(ValueError, match="is not numeric"):
        trigger.score("5", "five")
    with pytest.raises(ValueError, match="needs a reference or a verifier"):
        trigger.score("5", logits_margin=1.0)


@pytest.mark.parametrize(
    "config",
    [
        {"weights": (1, 1, 1)},
        {"weights": (0, 0, 0, 0)},
        {"weights": (-1, 1, 1, 1)},
        {"lm_max": 0},
        {"damping_percentiles": (95, 5)},
        {"numeric": "sometimes"},
    ],
)
def test_bad_config(config: dict) -> None:
    with pytest.raises(ValueError):
        TriggerConfig(**config)


def test_calibrate_needs_enough_pairs(trigger: Trigger) -> None:
    with pytest.raises(ValueError, match="5 or more"):
        trigger.calibrate([("a", "a")])


def test_verifier_errors_name_the_expression(bow_embeddings) -> None:
    trigger = Trigger(embeddings=bow_embeddings, verifier=arithmetic_verifier)
    with pytest.raises(ValueError, match="cannot parse"):
        trigger.score("5", expression="4*")
