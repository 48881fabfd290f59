"""A seeded generator of multi-step arithmetic word problems, in GSM8K's socratic format.

The demo and the tests need data that ships with the package: these templates are the
project's own. Each problem is a GSM8K record ({"question", "answer"}) whose answer holds
one "sub-question ** worked step <<expr=value>>" line per step and a "#### value" line.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sage_agent.errors import InvalidInput
from sage_agent.scoring.numeric import format_number
from sage_agent.scoring.verifier import evaluate_expression
from sage_agent.tasks.steps import AtomicStep, steps_from_gsm8k

_NAMES = ["Tom", "Ana", "Ravi", "Mei", "Lena", "Omar", "Sofia", "Kofi", "Ines", "Jack"]
_ITEMS = ["pens", "apples", "stickers", "marbles", "cards", "books", "shells", "coins"]


@dataclass(frozen=True)
class _Step:
    question: str
    expression: str
    sentence: str  # worked sentence with "{expr}" and "{value}" placeholders


def _total_left(r: random.Random, name: str, item: str) -> tuple[str, list[_Step]]:
    a, b = r.randint(2, 9), r.randint(3, 12)
    c = r.randint(1, a * b - 1)
    question = (
        f"{name} has {a} boxes of {b} {item} and gives away {c} {item}. How many {item} are left?"
    )
    return question, [
        _Step(
            f"How many {item} does {name} have?",
            f"{a}*{b}",
            f"{name} has {{expr}} = {{value}} {item}.",
        ),
        _Step("How many are left?", f"{{0}}-{c}", f"{{expr}} = {{value}} {item} are left."),
    ]


def _change(r: random.Random, name: str, item: str) -> tuple[str, list[_Step]]:
    a, b = r.randint(2, 8), r.randint(2, 15)
    c = r.choice([x for x in (20, 50, 100, 200) if x > a * b])
    question = (
        f"{name} buys {a} {item} at ${b} each and pays with a ${c} bill. "
        f"How much change does {name} get?"
    )
    return question, [
        _Step(
            f"How much do the {item} cost?", f"{a}*{b}", f"The {item} cost {{expr}} = ${{value}}."
        ),
        _Step("How much change is there?", f"{c}-{{0}}", "The change is {expr} = ${value}."),
    ]


def _pages(r: random.Random, name: str, item: str) -> tuple[str, list[_Step]]:
    a, b, c = r.randint(5, 40), r.randint(2, 9), r.randint(3, 60)
    question = (
        f"{name} reads {a} pages a day for {b} days and then {c} more pages. "
        f"How many pages does {name} read?"
    )
    return question, [
        _Step(
            f"How many pages in {b} days?",
            f"{a}*{b}",
            f"In {b} days {name} reads {{expr}} = {{value}} pages.",
        ),
        _Step(
            "How many pages in all?",
            f"{{0}}+{c}",
            f"In all {name} reads {{expr}} = {{value}} pages.",
        ),
    ]


def _share(r: random.Random, name: str, item: str) -> tuple[str, list[_Step]]:
    b, k = r.randint(2, 9), r.randint(3, 15)
    c, d = r.randint(1, k - 1), r.randint(2, 20)
    question = (
        f"{name} shares {b * k} {item} equally among {b} friends. Each friend loses {c} of them "
        f"and then finds {d} more. How many {item} does each friend have?"
    )
    return question, [
        _Step(
            "How many does each friend get?",
            f"{b * k}/{b}",
            f"Each friend gets {{expr}} = {{value}} {item}.",
        ),
        _Step(
            f"How many after losing {c}?",
            f"{{0}}-{c}",
            "After losing some, each has {expr} = {value}.",
        ),
        _Step(
            f"How many after finding {d}?",
            f"{{1}}+{d}",
            f"In the end each has {{expr}} = {{value}} {item}.",
        ),
    ]


def _saving(r: random.Random, name: str, item: str) -> tuple[str, list[_Step]]:
    a, b, c = r.randint(10, 90), r.randint(2, 6), r.randint(5, 30)
    question = (
        f"{name} saves ${a} a week for {b} weeks and spends ${c} on {item}. How much money is left?"
    )
    return question, [
        _Step(
            f"How much is saved in {b} weeks?", f"{a}*{b}", f"{name} saves {{expr}} = ${{value}}."
        ),
        _Step("How much is left?", f"{{0}}-{c}", "{expr} = ${value} is left."),
    ]


def _packs(r: random.Random, name: str, item: str) -> tuple[str, list[_Step]]:
    a, b, c, d = r.randint(2, 9), r.randint(2, 12), r.randint(2, 30), r.randint(2, 30)
    question = (
        f"{name} buys {a} packs of {b} {item}, gets {c} more from a friend and finds {d}. "
        f"How many {item} does {name} have?"
    )
    return question, [
        _Step(f"How many {item} are in the packs?", f"{a}*{b}", f"{{expr}} = {{value}} {item}."),
        _Step(
            "How many after the gift?",
            f"{{0}}+{c}",
            f"With the gift {name} has {{expr}} = {{value}} {item}.",
        ),
        _Step("How many in all?", f"{{1}}+{d}", f"In all {name} has {{expr}} = {{value}} {item}."),
    ]


Template = Callable[[random.Random, str, str], tuple[str, list[_Step]]]

_TEMPLATES: list[tuple[str, Template]] = [  # (operators used, template)
    ("*-", _total_left),
    ("*-", _change),
    ("*+", _pages),
    ("+-/", _share),
    ("*-", _saving),
    ("*+", _packs),
]


def generate_problems(n: int, seed: int = 0, operators: str | None = None) -> list[dict[str, str]]:
    """``n`` GSM8K-format records, the same for the same seed. ``operators`` (e.g. "+*")
    keeps the templates whose steps use only those operators."""
    if n < 0:
        raise InvalidInput(f"n must be non-negative, not {n}")
    templates = [t for ops, t in _TEMPLATES if operators is None or set(ops) <= set(operators)]
    if not templates:
        raise InvalidInput(f"no template uses only the operators {operators!r}")
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        template = rng.choice(templates)
        question, steps = template(rng, rng.choice(_NAMES), rng.choice(_ITEMS))
        values: list[str] = []
        lines = []
        for step in steps:
            expression = step.expression.format(*values)
            value = format_number(evaluate_expression(expression))
            worked = step.sentence.format(expr=expression, value=f"<<{expression}={value}>>{value}")
            lines.append(f"{step.question} ** {worked}")
            values.append(value)
        lines.append(f"#### {values[-1]}")
        records.append({"question": question, "answer": "\n".join(lines)})
    return records


def generate_steps(n: int, seed: int = 0) -> list[AtomicStep]:
    """The atomic steps of ``n`` generated problems, in order."""
    return [
        step
        for i, record in enumerate(generate_problems(n, seed=seed))
        for step in steps_from_gsm8k(record, task_id=f"generated-{seed}-{i}")
    ]
