"""Atomic steps from GSM8K records."""

from __future__ import annotations

import pytest

from sage_agent.tasks.problems import generate_problems
from sage_agent.tasks.steps import MalformedTask, final_answer, steps_from_gsm8k

SOCRATIC = {
    "question": "Tom has 4 boxes of 6 pens and gives away 5 pens. How many pens are left?",
    "answer": "How many pens does Tom have? ** Tom has 4 * 6 = <<4*6=24>>24 pens.\n"
    "How many are left? ** 24 - 5 = <<24-5=19>>19 pens are left.\n#### 19",
}
PLAIN = {
    "question": "q",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_socratic_steps() -> None:
    first, second = steps_from_gsm8k(SOCRATIC, task_id="t1")
    assert (first.id, first.index, first.question) == ("t1:0", 0, "How many pens does Tom have?")
    assert (first.expression, first.reference, first.tag) == ("4*6", "24", "*")
    assert (second.expression, second.reference, second.tag) == ("24-5", "19", "-")
    assert first.depends_on == [] and second.depends_on == [0]


def test_plain_annotation_steps() -> None:
    first, second = steps_from_gsm8k(PLAIN, task_id="p")
    assert first.question == "Natalia sold 48/2 = 24 clips in May."
    assert second.tag == "+" and second.depends_on == [0]


def test_generated_problems_parse() -> None:
    for i, record in enumerate(generate_problems(50, seed=2)):
        steps = steps_from_gsm8k(record, task_id=str(i))
        assert steps[-1].reference == final_answer(record["answer"])
        assert all(s.depends_on == [s.index - 1] for s in steps[1:])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "q", "answer": "no final line <<1+1=2>>"}, "####"),
        ({"question": "q", "answer": "He has 3.\n#### 3"}, "no calculator annotations"),
        ({"question": "q"}, "question"),
        ({"question": 3, "answer": "#### 3"}, "question"),
        ({"question": "q", "answer": "x <<1+1=2>>\n####   "}, "####"),
    ],
)
def test_malformed_tasks(record: dict, message: str) -> None:
    with pytest.raises(MalformedTask, match=message):
        steps_from_gsm8k(record, task_id="bad")
