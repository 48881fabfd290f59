"""What a task family is: how its items are asked, what their reference is, how an
answer is judged, how a failure is tagged and, where it can, how to make more items.

A family's item is one line of its file (a PubMedQA record, a BIG-Bench Hard
``{"input", "target"}``); it becomes one atomic step whose question is the rendered
prompt and whose reference is the item's target. Arithmetic is the family whose items
split into many steps (``families.arithmetic``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sage_agent.errors import MalformedTask
from sage_agent.records import TrainingPair
from sage_agent.scoring.numeric import number_span, numbers_match, parse_number
from sage_agent.tasks.steps import AtomicStep

AnswerKind = Literal["label", "choice", "number", "text"]
"""How an answer is read: one of a label space ("yes"), an option letter ("(B)"), a
number ("8"), or a string compared after normalising case and spaces ("] ] >")."""

Fields = Callable[[dict[str, Any]], tuple[str, str]]
"""A record -> (the text asked, the target); raises KeyError / TypeError on a record of
another shape."""

Generator = Callable[[random.Random, Sequence[str]], tuple[str, str]]
"""(rng, the inputs of the items to vary) -> a new (input, target), labelled exactly."""

InSteps = Callable[[str, str], str | None]
"""(an item's prompt, its target) -> the answer written in steps that end in the target,
or None where it cannot be written so."""

_CHOICE = re.compile(r"\(([A-R])\)|\b([A-R])\)|^\s*([A-R])(?:[.:]|[ \t]*(?:\n|$))")
"""An option letter: "(B)", "B)", or a bare "B" alone on the answer's first line or followed
by "." / ":" (so an answer that starts "A man..." names no option)."""
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class RuleTraining:
    """How a family whose answer applies a rule step after step is learnt: at this batch
    size, from this many training samples (``benchmarks/bench_steps.py`` measures both on
    held-out items). A short search ranks several configurations and trains none that
    far, so a search of such a family trains its leader on to ``samples``
    (``SearchConfig.family_rules``)."""

    batch_size: int
    samples: int


@dataclass(frozen=True)
class TaskFamily:
    """One kind of task (see the module docstring). ``tag`` is the buffer's tag of its
    failures (the family's name: its steps cluster by embedding within it)."""

    name: str
    kind: AnswerKind
    instruction: str
    """Appended to the item's text: what form the answer takes."""
    fields: Fields
    labels: tuple[str, ...] = ()
    """The label space, for kind "label" (in its canonical spelling)."""
    max_tokens: int = 16
    """Token cap of an answer: the longest target's tokens, with room for a short lead, or
    the longest answer ``in_steps`` writes."""
    generator: Generator | None = None
    """Makes verifier-labelled items; None where none can be made (PubMedQA)."""
    in_steps: InSteps | None = None
    """Writes a training answer in steps (``RecipeConfig.answers_in_steps``); None where the
    family's answers are trained as their targets."""
    rule: RuleTraining | None = None
    """What learning its rule takes, where that is measured; None: the store's search as
    configured."""

    @property
    def tag(self) -> str:
        return self.name

    @property
    def multi_step(self) -> bool:
        return False

    def prompt(self, text: str) -> str:
        return f"{text.strip()}\n{self.instruction}"

    def item(self, record: dict[str, Any]) -> tuple[str, str]:
        """(the prompt, the target) of a record; MalformedTask naming what is missing."""
        try:
            text, target = self.fields(record)
        except KeyError as error:
            raise MalformedTask(f"a {self.name} item needs the field {error.args[0]!r}") from None
        except (TypeError, AttributeError) as error:
            raise MalformedTask(f"a {self.name} item has a malformed field ({error})") from None
        if not isinstance(text, str) or not text.strip():
            raise MalformedTask(f"a {self.name} item needs a non-empty text")
        if not isinstance(target, str) or not target.strip():
            raise MalformedTask(f"a {self.name} item needs a non-empty target")
        return self.prompt(text), target.strip()

    def steps(self, task: dict[str, Any]) -> list[AtomicStep]:
        """The task's one step: its prompt as the question, its target as the reference."""
        prompt, target = self.item(task)
        task_id = str(task.get("id", "task"))
        return [
            AtomicStep(
                id=f"{task_id}:0",
                task_id=task_id,
                index=0,
                question=prompt,
                reference=target,
                tag=self.tag,
                family=self.name,
            )
        ]

    def target(self, task: dict[str, Any]) -> str | None:
        """The task's final reference (None when it has none)."""
        try:
            return self.item(task)[1]
        except MalformedTask:
            return None

    def answer_of(self, answer: str | None) -> str | None:
        """What an answer says, in the reference's spelling: the label, "(B)", the number
        or the normalised text; None when it says none of these."""
        if answer is None:
            return None
        if self.kind == "label":
            return _first_label(answer, self.labels)
        if self.kind == "choice":
            found = _CHOICE.search(answer)
            return f"({next(g for g in found.groups() if g)})" if found else None
        if self.kind == "number":
            value = parse_number(answer)
            return None if value is None else f"{value:g}"
        text = answer.strip().splitlines()[0] if answer.strip() else ""
        return normalised(text) or None

    def answer_span(self, answer: str) -> tuple[int, int] | None:
        """Where in ``answer`` what it says lies (``answer_of``'s label, letter, number or
        first line), or None: the model's confidence in an answer is that part's
        log-probability (``RouterConfig.route_below``)."""
        if self.kind == "number":
            return number_span(answer)
        if self.kind == "label":
            found = _first_label_match(answer, self.labels)
            return None if found is None else found[0].span()
        if self.kind == "choice":
            match = _CHOICE.search(answer)
            return None if match is None else match.span()
        line = re.match(r"\s*(\S[^\n]*)", answer)
        return None if line is None else line.span(1)

    def judge(self, answer: str, reference: str) -> bool:
        """Whether ``answer`` says ``reference``."""
        if self.kind == "number":
            return numbers_match(parse_number(answer), parse_number(reference))
        said = self.answer_of(answer)
        wanted = self.answer_of(reference) if self.kind != "text" else normalised(reference)
        return said is not None and said == wanted

    def variants(self, sources: Sequence[str], n: int, rng: random.Random) -> list[TrainingPair]:
        """``n`` generated items, as prompt and target, made like ``sources`` (the texts
        of the items to vary); none when the family has no generator."""
        if self.generator is None or n <= 0:
            return []
        pairs = []
        for _ in range(n):
            text, target = self.generator(rng, sources)
            pairs.append(TrainingPair(self.prompt(text), target))
        return pairs


def normalised(text: str) -> str:
    """Lower case, one space between words, no closing full stop."""
    return _SPACES.sub(" ", text.strip().lower()).rstrip(".").strip()


def _first_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label the answer names first (whole words, any case)."""
    found = _first_label_match(answer, labels)
    return None if found is None else found[1]


def _first_label_match(answer: str, labels: Sequence[str]) -> tuple[re.Match[str], str] | None:
    """The match of the label the answer names first, and that label."""
    lowered = answer.lower()
    found = []
    for label in labels:
        match = re.search(rf"(?<![\w]){re.escape(label.lower())}(?![\w])", lowered)
        if match:
            found.append((match.start(), match, label))
    if not found:
        return None
    _, match, label = min(found, key=lambda f: f[0])
    return match, label
