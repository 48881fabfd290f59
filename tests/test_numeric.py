"""Number parsing, math metrics and the safe arithmetic verifier."""

from __future__ import annotations

import math
import time

import pytest

from sage_agent import (
    ExpressionError,
    arithmetic_verifier,
    evaluate_expression,
    format_number,
    math_metrics,
    parse_number,
)
from sage_agent.scoring.numeric import number_logprob


def _tokens(*pieces: tuple[str, float]) -> list[dict]:
    return [{"token": token, "logprob": logprob} for token, logprob in pieces]


def test_number_logprob_sums_the_tokens_of_the_number_parse_number_reads() -> None:
    # "3*4 = 12" reads 12: only the tokens "1" and "2" count, not the expression's "3" or "4"
    tokens = _tokens(
        ("3", -2.0), ("*", -0.1), ("4", -3.0), (" =", -0.1), (" 1", -0.5), ("2", -0.25)
    )
    assert number_logprob(tokens) == pytest.approx(-0.75)
    # chatter after the number does not lower it; a token straddling the number counts
    chatter = _tokens(("It is 4", -0.5), ("2", -0.5), (". Sure?", -9.0))
    assert parse_number("It is 42. Sure?") == 42
    assert number_logprob(chatter) == pytest.approx(-1.0)
    assert number_logprob(_tokens(("no", -0.1), (" number", -0.2))) is None
    assert number_logprob([]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("19", 19.0),
        ("He has 19 pens.", 19.0),
        ("1,234", 1234.0),
        ("$5", 5.0),
        ("It costs $1,250.50 in total", 1250.5),
        ("50%", 50.0),
        ("3.5", 3.5),
        (".5", 0.5),
        ("3/4", 0.75),
        ("-7", -7.0),
        ("−7", -7.0),
        ("16-3-4 = 9", 9.0),
        ("16-3-4 = 9 pens, then 3 more", 9.0),
        ("2 + 3 = 5", 5.0),
        ("x = -12", -12.0),
        ("between 3 and 4", 4.0),
    ],
)
def test_parse_number(text: str, expected: float) -> None:
    assert parse_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", [None, "", "   ", "no number here", "nan", "inf", "1/0", "="])
def test_parse_number_finds_none(text: str | None) -> None:
    assert parse_number(text) is None


def test_format_number() -> None:
    assert format_number(24.0) == "24"
    assert format_number(2.5) == "2.5"
    assert format_number(1 / 3) == "0.333333"
    with pytest.raises(ValueError, match="non-finite"):
        format_number(math.inf)


def test_math_metrics() -> None:
    metrics = math_metrics(["5", "The answer is 7", "nothing", "10"], ["5", 8, "3", "12"])
    assert metrics.em == 0.25
    assert metrics.ner == 0.75
    assert metrics.mae == pytest.approx((0 + 1 + 2) / 3)
    assert metrics.mse == pytest.approx((0 + 1 + 4) / 3)
    assert metrics.n == 4
    assert math_metrics(["x"], ["1"]).mae is None


def test_math_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match="pair up"):
        math_metrics(["1"], ["1", "2"])
    with pytest.raises(ValueError, match="no predictions"):
        math_metrics([], [])
    with pytest.raises(ValueError, match="not a finite number"):
        math_metrics(["1"], ["many"])
    with pytest.raises(ValueError, match="not a finite number"):
        math_metrics(["1"], [float("nan")])


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("4*6", 24),
        ("24-5", 19),
        ("20/100*50", 10),
        ("(3+4)*2", 14),
        ("-3+10", 7),
        ("+3", 3),
        ("17%5", 2),
        ("17 % (2+3)", 2),
        ("60 * 25%", 15),
        ("60 * 100%", 60),
        ("12.5% * 80", 10),
        ("(50%) * 4", 2),
        ("17//5", 3),
        ("2**10", 1024),
        ("1,200+300", 1500),
        ("$12*3", 36),
        ("6×7", 42),
        ("10÷4", 2.5),
        ("10−4", 6),
    ],
)
def test_evaluate_expression(expression: str, value: float) -> None:
    assert evaluate_expression(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("__import__('os').system('true')", "not plain arithmetic"),
        ("x+1", "not plain arithmetic"),
        ("(1).real", "not plain arithmetic"),
        ("'a'*3", "not plain arithmetic"),
        ("True+1", "not plain arithmetic"),
        ("1/0", "division by zero"),
        ("9**9**9", "exponent"),
        ("2**1000.5", "exponent"),
        ("4*", "cannot parse"),
        ("(-8)**0.5", "no real value"),
        # Hostile input: each refused at once, never a hang or another exception.
        ("((((9**64)**64)**64)**64)", "larger than"),
        ("(10**64)**64", "larger than"),
        ("-" * 5000 + "1", "at most 1000"),
        ("-" * 900 + "1", "nested deeper"),
        ("1+" * 300 + "1", "nested deeper"),
        ("(" * 300 + "1" + ")" * 300, "cannot parse|nested"),
        ("1e308*10", "beyond"),
        ("1" * 999, "overflows|beyond"),
        ("999999999999*999999999999", "beyond"),
        (None, "empty"),
    ],
)
def test_evaluate_expression_refuses(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate_expression(expression)


def test_a_long_sum_within_the_bounds_is_arithmetic() -> None:
    assert evaluate_expression("1+" * 150 + "1") == 151


@pytest.mark.parametrize(
    "text",
    ["-" + " " * 20000 + "x", " " * 100000 + "5", "$ " * 20000, "1" + " " * 5000 + "/" * 3],
)
def test_parse_number_is_linear_on_runs_of_spaces(text: str) -> None:
    started = time.perf_counter()
    parse_number(text)
    assert time.perf_counter() - started < 2.0  # a hang detector: it was cubic (800: 4 s)


def test_arithmetic_verifier_formats_references() -> None:
    assert arithmetic_verifier("4*6") == "24"
    assert arithmetic_verifier("5/2") == "2.5"
