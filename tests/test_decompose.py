"""Decomposers (data, model, callable), substitution of earlier answers, and reading task
files with malformed lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from sage_agent.tasks.data import DataError, read_tasks
from sage_agent.tasks.decompose import (
    DecompositionError,
    LLMDecomposer,
    annotation_decomposer,
    socratic_decomposer,
    substitute,
)
from sage_agent.tasks.plans import parse_plan, plan_prompt

TASK = {
    "id": "pens",
    "question": "Tom has 4 boxes of 6 pens and gives away 5 pens. How many pens are left?",
    "answer": "How many pens does Tom have? ** Tom has 4 * 6 = <<4*6=24>>24 pens.\n"
    "How many are left? ** 24 - 5 = <<24-5=19>>19 pens are left.\n#### 19",
}


def test_socratic_and_annotation_questions() -> None:
    socratic = socratic_decomposer(TASK)
    plain = annotation_decomposer(TASK)
    assert [s.question for s in socratic] == ["How many pens does Tom have?", "How many are left?"]
    assert plain[0].question == "Tom has 4 * 6 = 24 pens."
    assert [s.expression for s in socratic] == [s.expression for s in plain] == ["4*6", "24-5"]
    assert socratic[1].depends_on == [0] and socratic[1].id == "pens:1"


def test_data_decomposer_errors_name_the_problem() -> None:
    with pytest.raises(DecompositionError, match="####"):
        socratic_decomposer({"id": "x", "question": "q", "answer": "4*6 = <<4*6=24>>24"})
    with pytest.raises(DecompositionError, match="calculator annotations"):
        socratic_decomposer({"id": "x", "question": "q", "answer": "twenty-four\n#### 24"})


def test_substitute_puts_earlier_answers_in_place_of_their_results() -> None:
    steps = socratic_decomposer(TASK)
    assert substitute(steps[1], steps, {0: "23"}) == "23-5"
    assert substitute(steps[1], steps, {0: "The answer is 24.0"}) == "24-5"
    assert substitute(steps[1], steps, {0: "I don't know"}) is None
    assert substitute(steps[0], steps, {}) == "4*6"  # depends on nothing


def test_plan_parsing() -> None:
    plan = "Sure!\n1. How many pens? | 4*6\n2) How many left? | [1] - 5\nDone."
    steps = parse_plan(plan, "t")
    assert [s.expression for s in steps] == ["4*6", "24 - 5"]
    assert [s.reference for s in steps] == ["24", "19"]
    assert steps[1].depends_on == [0] and steps[1].tag == "-"


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        # what the embedded model wrote for "Tom has 4 boxes of 6 pens and gives away 5"
        ("1. 4*6 = 24\n2. 24 - 5 = 16 pens are left\n\nThe answer is 16.", ["4*6", "24 - 5"]),
        # its own wrong result is dropped; the later step that used it gets the right one
        ("Step 1: 4 * 6 = 25\nStep 2: 25 - 5 = 20", ["4 * 6", "24 - 5"]),
        ("- Tom has 24 pens: 4 × 6 = 24\n* He gives away 5: 24 − 5 = 19", ["4*6", "24 - 5"]),
        ("1. 2 large pizzas = 2 * 8 = 16 slices\n2. 16 slices + 8 = 24", ["2 * 8", "16 + 8"]),
        ("1. 60 mango trees * 1.5 = 90 trees\n2. 90 trees x 2 = 180", ["60 * 1.5", "90*2"]),
        ("1. $1,200 / 4 = $300\n2. result of step 1 * 2 = 600", ["1200 / 4", "300 * 2"]),
        ("1. (4 + 6) * 2 = 20\n2. step 1 / 4", ["(4 + 6) * 2", "20 / 4"]),
        ("1. 20 * 5 = 100 miles\n2. 20 * 5 = 100 miles", ["20 * 5"]),  # restated once
        # the model's result is the number right after "=", not the text's last number
        ("1. 12 x 2 = 24 pages in 2 days\n2. 24 / 2 = 12", ["12*2", "24 / 2"]),
        # a percentage is a share, as the embedded model writes it on GSM8K
        ("1. 60 federal returns * 25% = 15\n2. 15 + 5 = 20", ["60 * 25%", "15 + 5"]),
    ],
)
def test_plans_as_models_write_them(plan: str, expected: list[str]) -> None:
    steps = parse_plan(plan, "t")
    assert [s.expression for s in steps] == expected
    if len(steps) > 1:
        assert steps[1].depends_on == [0]  # by value, by step number, or by [k]


def test_a_step_on_a_line_that_does_not_compute_is_dropped() -> None:
    steps = parse_plan("1. 4 * 6 = 24\n2. 24 / 0 = 0\n3. [2] + 1\n4. 24 - 5 = 19", "t")
    assert [s.expression for s in steps] == ["4 * 6", "24 - 5"]
    assert [s.index for s in steps] == [0, 1]


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("I cannot do this.", "no computable step in the plan: 'I cannot do this.'"),
        ("1. x | [2]+1", r"\[2\] is not an earlier step"),
        ("1. Julie is reading a 120-page book.\n2. She read 12 pages.", "no computable step"),
        ("1. 2. 2. 2. 2.", "no computable step"),
    ],
)
def test_bad_plans_are_rejected_with_the_models_text(plan: str, message: str) -> None:
    with pytest.raises(DecompositionError, match=message):
        parse_plan(plan, "t")


def test_the_plan_prompt_shows_plans_of_generated_problems() -> None:
    prompt = plan_prompt("How many pens are left?")
    shots = [block for block in prompt.split("\n\n") if block.startswith("Problem:")]
    assert len(shots) == 3 and shots[-1] == "Problem: How many pens are left?\n"
    for shot in shots[:-1]:  # every example plan reads back as its own steps
        assert len(parse_plan(shot.split("\n", 1)[1], "x")) >= 2


def test_llm_decomposer_works_with_any_chat_model() -> None:
    model = FakeListChatModel(responses=["1. Pens? | 4*6\n2. Left? | [1]-5"])
    steps = LLMDecomposer(model)({"id": "t", "question": TASK["question"]})
    assert [s.reference for s in steps] == ["24", "19"]
    with pytest.raises(DecompositionError, match="question"):
        LLMDecomposer(model)({"id": "t"})


def test_a_plan_that_does_not_parse_is_asked_for_again_with_other_examples() -> None:
    plan = "1. Pens? | 4*6\n2. Left? | [1]-5"
    asked: list[str] = []

    class Recording(FakeListChatModel):
        def _call(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            asked.append(messages[-1].text)
            return super()._call(messages, stop, run_manager, **kwargs)

    question = {"id": "t", "question": TASK["question"]}
    steps = LLMDecomposer(Recording(responses=["1. 5 miles\n2. 8 miles", plan]))(question)
    assert [s.reference for s in steps] == ["24", "19"]
    # the second prompt is the same instruction and question with other example problems
    assert len(asked) == 2 and asked[0] != asked[1]
    assert asked[1] == plan_prompt(TASK["question"], seed=8)
    assert asked[0] == plan_prompt(TASK["question"]) and asked[1].endswith(asked[0][-80:])
    # none parses: the first plan's error, saying how many prompts were tried
    failing = LLMDecomposer(FakeListChatModel(responses=["1. 5 miles", "2. 8 miles"]))
    with pytest.raises(DecompositionError, match=r"5 miles.*none of 2 prompts"):
        failing(question)
    # a prompt of one's own gets no retries unless given
    own = LLMDecomposer(FakeListChatModel(responses=["1. 5 miles", plan]), prompt=str)
    with pytest.raises(DecompositionError, match=r"5 miles'$"):
        own(question)
    given = LLMDecomposer(
        FakeListChatModel(responses=["1. 5 miles", plan]), prompt=str, retry_prompts=[str.upper]
    )
    assert len(given(question)) == 2


def test_read_tasks_skips_malformed_lines_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        json.dumps(TASK)
        + "\n{not json\n\n"
        + json.dumps({"answer": "x"})
        + "\n"
        + json.dumps({**TASK, "id": None})
        + "\n"
    )
    with caplog.at_level(logging.WARNING):
        tasks = read_tasks(path)
    assert [t["id"] for t in tasks] == ["pens", "tasks:5"]
    assert f"{path}:2" in caplog.text and f"{path}:4" in caplog.text
    with pytest.raises(DataError, match=f"{path}:2"):
        read_tasks(path, strict=True)
    assert len(read_tasks(path, limit=1)) == 1
    with pytest.raises(DataError, match="does not exist"):
        read_tasks(tmp_path / "missing.jsonl")
