"""Items made with exact labels, in the shape of BIG-Bench Hard's tasks: more training
pairs for a family whose failures are a few dozen (as ``training.augment`` makes
arithmetic variants). Each generator takes an rng and the texts of the items it varies,
and returns a new (input, target); the label is computed, never guessed.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence

from sage_agent.scoring.numeric import format_number
from sage_agent.scoring.verifier import evaluate_expression
from sage_agent.tasks.families.counting import CATEGORIES

_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_NAMES = [
    "Sherrie",
    "Vernell",
    "Alexis",
    "Michaela",
    "Elanor",
    "Kristian",
    "Delbert",
    "Jerry",
    "Shalonda",
    "Vina",
    "Helene",
    "Kandi",
    "Fidel",
    "Millicent",
    "Tamika",
    "Raymond",
    "Ka",
    "Jim",
    "Amberly",
    "Leda",
    "Lorine",
    "Jaymie",
    "Gwenn",
    "Osvaldo",
]
_LIST = re.compile(r"List:[ \t]*(.*)")


def boolean_expression(rng: random.Random, _sources: Sequence[str]) -> tuple[str, str]:
    """ "not ( True ) and False is": two to four literals, each with up to two "not"s and
    maybe parentheses, joined by "and" / "or" (Python's precedence: and before or)."""
    atoms, values = [], []
    for _ in range(rng.randint(2, 4)):
        literal = rng.choice((True, False))
        inner, outer = rng.choice((0, 0, 1, 2)), rng.choice((0, 0, 1, 2))
        text = "not " * inner + str(literal)
        if rng.random() < 0.4:
            text = f"( {text} )"
        atoms.append("not " * outer + text)
        values.append(literal ^ ((inner + outer) % 2 == 1))
    operators = [rng.choice(("and", "or")) for _ in atoms[1:]]
    # or of the and-runs: Python's precedence, computed rather than evaluated.
    runs, run = [], values[0]
    for operator, value in zip(operators, values[1:], strict=True):
        if operator == "and":
            run = run and value
        else:
            runs.append(run)
            run = value
    runs.append(run)
    words = [atoms[0]] + [f"{o} {a}" for o, a in zip(operators, atoms[1:], strict=True)]
    return " ".join(words) + " is", str(any(runs))


def multistep_arithmetic(rng: random.Random, _sources: Sequence[str]) -> tuple[str, str]:
    """ "((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) =": two groups of four numbers in
    [-9, 9], evaluated by the verifier."""

    def group() -> str:
        numbers = [str(rng.randint(-9, 9)) for _ in range(4)]
        operators = [rng.choice("+-*") for _ in range(3)]
        return numbers[0] + "".join(
            f" {o} {n}" for o, n in zip(operators, numbers[1:], strict=True)
        )

    expression = f"(({group()}) {rng.choice('+-*')} ({group()}))"
    return f"{expression} =", format_number(evaluate_expression(expression))


def word_sorting(rng: random.Random, sources: Sequence[str]) -> tuple[str, str]:
    """ "Sort the following words alphabetically: List: ...": words drawn from the lists of
    ``sources``, as many as one of them holds."""
    lists = [m.group(1).split() for s in sources if (m := _LIST.search(s))]
    vocabulary = sorted({w for words in lists for w in words}) or sorted(
        w for ws in CATEGORIES.values() for w in ws
    )
    size = min(len(rng.choice(lists)) if lists else rng.randint(3, 10), len(vocabulary))
    words = rng.sample(vocabulary, max(1, size))
    text = "Sort the following words alphabetically: List: " + " ".join(words)
    return text, " ".join(sorted(words))


def dyck_completion(rng: random.Random, _sources: Sequence[str]) -> tuple[str, str]:
    """ "... Input: < [ [": a prefix of a balanced sequence; the target closes it."""
    stack: list[str] = []
    tokens: list[str] = []
    for _ in range(rng.randint(2, 20)):
        if stack and rng.random() < 0.4:
            tokens.append(_BRACKETS[stack.pop()])
        else:
            stack.append(rng.choice(list(_BRACKETS)))
            tokens.append(stack[-1])
    if not stack:
        stack.append(rng.choice(list(_BRACKETS)))
        tokens.append(stack[-1])
    text = (
        "Complete the rest of the sequence, making sure that the parentheses are closed "
        "properly. Input: " + " ".join(tokens)
    )
    return text, " ".join(_BRACKETS[b] for b in reversed(stack))


def web_of_lies(rng: random.Random, _sources: Sequence[str]) -> tuple[str, str]:
    """ "Sherrie tells the truth. Vernell says Sherrie lies. ...": a chain of five."""
    names = rng.sample(_NAMES, 5)
    truthful = rng.choice((True, False))
    sentences = [f"{names[0]} {'tells the truth' if truthful else 'lies'}."]
    for previous, name in itertools.pairwise(names):
        says_truth = rng.choice((True, False))
        sentences.append(f"{name} says {previous} {'tells the truth' if says_truth else 'lies'}.")
        truthful = says_truth == truthful
    text = f"Question: {' '.join(sentences)} Does {names[-1]} tell the truth?"
    return text, "Yes" if truthful else "No"
