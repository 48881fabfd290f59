"""The training recipe: a cluster of failures -> training and validation pairs.

Training: the cluster's training failures (each ``failure_repeats`` times) topped up with
verifier-labelled variants of them (a plan's: its question with other numbers and its
plan computed again, ``augment.plan_variant``), plus a ``replay_fraction`` share of rehearsal
(canaries and their variants), ``train_size`` pairs in all; for a label task, each label
takes an equal share of them (``balance_labels``). Validation: the held-out
failures and variants of them (a few held-out samples alone make the ranking and the gate
noise). No training pair is a gate canary or a held-out failure. A family that writes
its answers in steps (``answers_in_steps``) has every pair's answer so written.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage

from sage_agent.buffer import Cluster
from sage_agent.chat import ChatSage
from sage_agent.errors import StoreError
from sage_agent.records import Judge, TrainingPair
from sage_agent.store.config import RecipeConfig
from sage_agent.store.gate import Canaries
from sage_agent.tasks.families import TaskFamily, family_of_tag
from sage_agent.tasks.families.base import InSteps
from sage_agent.tasks.plans import PLAN_MAX_TOKENS, PLAN_STOP, PLAN_TAG, plan_matches
from sage_agent.training.augment import augment_pairs, plan_pairs
from sage_agent.training.formats import ANSWER_FORMATS, AnswerFormat
from sage_agent.training.validation import (
    TeacherForced,
    generate,
    judge_answers,
    teacher_forced,
)

Example = tuple[TrainingPair, str | None]
"""A pair and the expression its prompt asks for (None: no variants can be made)."""


@dataclass(frozen=True)
class Recipe:
    """The pairs one search trains and ranks on."""

    train: list[TrainingPair]
    validation: list[TrainingPair]
    max_tokens: int | None = None
    """How long a validation answer may run (None: an atomic step's answer; a plan's is
    longer)."""
    judge: Judge | None = None
    """Whether a validation answer is right (None: its number is the reference's; a plan
    is judged by what it computes, ``plans.plan_matches``)."""
    gate: list[TrainingPair] = field(default_factory=list)
    """The gate's canaries with their answers written as training writes them, for a
    teacher-forced gate (generation judges the canaries' plain references)."""
    stop: tuple[str, ...] = ()
    """Where a generated answer ends besides the end of the turn (a plan's: its first
    blank line, as the decomposer generates it)."""
    stop_repeated_line: bool = False
    """End a generated answer before a line that repeats an earlier one (a plan's loop, as
    the decomposer generates it)."""

    def generate(
        self, chat: ChatSage, adapter: str | None, prompts: Sequence[str]
    ) -> list[AIMessage]:
        """``validation.generate`` with this recipe's answer length and stop."""
        return generate(
            chat,
            adapter,
            prompts,
            max_tokens=self.max_tokens,
            stop=self.stop,
            stop_repeated_line=self.stop_repeated_line,
        )

    def answers_right(
        self, chat: ChatSage, adapter: str | None, pairs: Sequence[TrainingPair]
    ) -> tuple[bool, ...]:
        """Per pair, whether the answer generated with ``adapter`` is right (the recipe's
        judge): what confirms a trial that its teacher-forced ranking does not decide."""
        messages = self.generate(chat, adapter, [p.prompt for p in pairs])
        return judge_answers(messages, pairs, self.judge)

    def rank(self, chat: ChatSage, adapter: str | None) -> TeacherForced:
        """The validation pairs read teacher-forced: what the search ranks trials by."""
        return teacher_forced(chat, adapter, self.validation)

    def gate_forced(self, chat: ChatSage, adapter: str, indices: Sequence[int]) -> list[bool]:
        """Per gate canary of ``indices``: right teacher-forced, which implies right when
        generated (an answer right teacher-forced is what greedy decoding writes)."""
        if not indices:
            return []
        return list(teacher_forced(chat, adapter, [self.gate[i] for i in indices]).exact)


def cluster_examples(cluster: Cluster, min_train_samples: int) -> list[Example]:
    """The cluster's samples that carry a reference, as pairs (StoreError when fewer
    than ``min_train_samples`` do). A sample's prompt is its text, or its payload's
    "prompt" where the model saw more than the text clustered on (a plan's few-shot
    prompt around the question)."""
    examples, missing = [], 0
    for sample in cluster.samples:
        payload = sample.payload or {}
        reference = payload.get("reference")
        if reference is None or not str(reference).strip():
            missing += 1
            continue
        prompt = payload.get("prompt") or sample.text
        examples.append((TrainingPair(prompt, str(reference)), payload.get("expression")))
    if len(examples) < min_train_samples:
        raise StoreError(
            f"cluster {cluster.id} has {len(examples)} samples with a reference "
            f"({missing} without one); training needs at least {min_train_samples}"
        )
    return examples


def build_recipe(
    cluster: Cluster,
    config: RecipeConfig,
    *,
    min_train_samples: int,
    seed: int,
    rehearsal: Canaries = (),
    gate: Sequence[Example] = (),
) -> Recipe:
    """Training and validation pairs of ``cluster`` (see the module docstring)."""
    examples = cluster_examples(cluster, min_train_samples)
    rng = random.Random(f"{seed}:{cluster.id}")
    rng.shuffle(examples)
    n_val = max(2, round(len(examples) * config.validation_fraction))
    train, val = examples[n_val:], examples[:n_val]
    answer = ANSWER_FORMATS[config.answer_format]
    family = family_of_tag(cluster.tag)
    if cluster.tag == PLAN_TAG:
        variants = _plan_variants(cluster)
    elif family.multi_step:
        variants = _step_variants(answer)
    else:
        variants = _family_variants(family)
    unseen = frozenset(p.prompt for p, _ in gate) | {p.prompt for p, _ in val}
    rehearsal_size = round(config.train_size * config.replay_fraction) if rehearsal else 0
    replay = written(rehearsal, answer)[:rehearsal_size]
    replay = top_up(replay, rehearsal, rehearsal_size, rng, variants, unseen)
    failures = written(train, answer) * config.failure_repeats
    failures = top_up(failures, train, config.train_size - rehearsal_size, rng, variants, unseen)
    training = failures + replay
    if config.balance_labels and family.labels:
        training = balanced_by_label(training, family, rng)
    seen = {p.prompt for p in training}
    # Its own generator: the validation set must not move with train_size.
    extra = variants(val, config.val_variants, random.Random(f"{seed}:{cluster.id}:validation"))
    validation = written(val, answer) + [p for p in extra if p.prompt not in seen]
    gate_written = written(gate, answer)
    if cluster.tag == PLAN_TAG:
        return Recipe(
            training,
            validation,
            PLAN_MAX_TOKENS,
            plan_matches,
            gate_written,
            PLAN_STOP,
            stop_repeated_line=True,
        )
    if not family.multi_step:
        if config.answers_in_steps and family.in_steps is not None:
            training, validation, gate_written = (
                in_steps(pairs, family.in_steps) for pairs in (training, validation, gate_written)
            )
        return Recipe(training, validation, family.max_tokens, family.judge, gate_written)
    return Recipe(training, validation, gate=gate_written)


def balanced_by_label(
    pairs: Sequence[TrainingPair], family: TaskFamily, rng: random.Random
) -> list[TrainingPair]:
    """As many pairs as given, each label that occurs among them taking an equal share:
    a label's own pairs, repeated in turn where it has fewer than its share, and drawn
    at random where it has more. Without this, a cluster of a label task's failures is
    mostly the labels the base model does not say, and its adapter learns to say those
    instead (PubMedQA: "no" to nearly everything became "yes" to nearly everything)."""
    by_label: dict[str | None, list[TrainingPair]] = {}
    for pair in pairs:
        by_label.setdefault(family.answer_of(pair.answer), []).append(pair)
    share = len(pairs) // len(by_label)
    balanced = []
    for own in by_label.values():
        rng.shuffle(own)
        balanced += [own[i % len(own)] for i in range(share)]
    rng.shuffle(balanced)
    return balanced


def in_steps(pairs: Sequence[TrainingPair], write: InSteps) -> list[TrainingPair]:
    """Each pair with its answer written in steps by ``write``, where it can be."""
    return [TrainingPair(p.prompt, write(p.prompt, p.answer) or p.answer) for p in pairs]


def written(examples: Sequence[Example], answer: AnswerFormat) -> list[TrainingPair]:
    """Each pair with its answer written by ``answer`` (pairs without an expression keep
    their reference as it is)."""
    return [TrainingPair(p.prompt, answer(e, p.answer)) if e else p for p, e in examples]


Variants = Callable[[Sequence[Example], int, random.Random], list[TrainingPair]]
"""(sources, how many of each, rng) -> verifier-labelled variants of the sources."""


def _step_variants(answer: AnswerFormat) -> Variants:
    return lambda sources, n, rng: augment_pairs(sources, n, rng, answer=answer)


def _family_variants(family: TaskFamily) -> Variants:
    """Items the family generates with exact labels, made like the sources (none for a
    family without a generator: its cluster trains on its own failures)."""
    return lambda sources, n, rng: family.variants(
        [p.prompt for p, _ in sources], n * len(sources), rng
    )


def _plan_variants(cluster: Cluster) -> Variants:
    """Variants of the cluster's plans, their questions read from its samples (a plan
    failure's text is its question, its prompt the planner's around it)."""
    questions = {(s.payload or {}).get("prompt"): s.text for s in cluster.samples}

    def variants(sources: Sequence[Example], n: int, rng: random.Random) -> list[TrainingPair]:
        asked = [(p, questions[p.prompt]) for p, _ in sources if p.prompt in questions]
        return plan_pairs(asked, n, rng)

    return variants


def top_up(
    pairs: list[TrainingPair],
    sources: Sequence[Example],
    size: int,
    rng: random.Random,
    variants: Variants,
    exclude: frozenset[str] = frozenset(),
) -> list[TrainingPair]:
    """``pairs`` topped up to ``size`` with ``variants`` of ``sources``, none of whose
    prompts is in ``exclude`` (a variant of a small expression can land on another step
    exactly)."""
    missing = size - len(pairs)
    if missing <= 0 or not sources:
        return pairs
    per_source = math.ceil(missing / len(sources)) + 1  # one spare for excluded ones
    made = [p for p in variants(sources, per_source, rng) if p.prompt not in exclude]
    return pairs + made[:missing]
