"""The built-in word-problem generator."""

from __future__ import annotations

import re

import pytest

from sage_agent import evaluate_expression, parse_number, steps_from_gsm8k
from sage_agent.tasks.problems import generate_problems


def test_same_seed_same_problems() -> None:
    assert generate_problems(20, seed=4) == generate_problems(20, seed=4)
    assert generate_problems(20, seed=4) != generate_problems(20, seed=5)


def test_records_are_consistent_gsm8k_socratic() -> None:
    for record in generate_problems(200, seed=0):
        *steps, final = record["answer"].split("\n")
        assert final.startswith("#### ") and len(steps) >= 2
        last_value = None
        for line in steps:
            assert " ** " in line
            ((expression, value),) = re.findall(r"<<([^=]+)=([^>]+)>>", line)
            assert evaluate_expression(expression) == pytest.approx(float(value))
            assert float(value) >= 0 and float(value).is_integer()
            last_value = value
        assert parse_number(final) == float(last_value)


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        generate_problems(-1)


def test_generate_steps_flattens_the_problems_in_order() -> None:
    from sage_agent.tasks.problems import generate_steps
    from sage_agent.tasks.steps import steps_from_gsm8k

    records = generate_problems(10, seed=4)
    expected = [s.expression for i, r in enumerate(records) for s in steps_from_gsm8k(r, str(i))]
    assert [s.expression for s in generate_steps(10, seed=4)] == expected


def test_operators_pick_the_templates() -> None:
    from sage_agent.tasks.problems import generate_steps

    records = generate_problems(30, seed=1, operators="+*")
    steps = [s for i, r in enumerate(records) for s in steps_from_gsm8k(r, str(i))]
    assert {s.tag for s in steps} == {"*", "+"}
    assert len(generate_steps(5, seed=1)) > 0
    with pytest.raises(ValueError, match="no template"):
        generate_problems(3, operators="%")
