"""Task families beyond arithmetic: reading PubMedQA / BIG-Bench Hard / {"input",
"target"} files, judging answers, generated items with exact labels, label metrics, and
a label task through the graph on the tiny llama (fail, train, retry with an adapter)."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sage_agent import ChatSage, SageAgent
from sage_agent.buffer import Cluster, Sample
from sage_agent.errors import DataError, MalformedTask
from sage_agent.records import TrainingPair
from sage_agent.scoring.labels import NO_LABEL, label_metrics
from sage_agent.scoring.trigger import Trigger
from sage_agent.store.recipe import build_recipe
from sage_agent.tasks.data import read_tasks
from sage_agent.tasks.families import (
    ARITHMETIC,
    PUBMEDQA,
    TEXT,
    detect_family,
    family_named,
    family_of_tag,
)
from sage_agent.tasks.families.base import TaskFamily
from sage_agent.tasks.families.bbh import BBH_FAMILIES
from sage_agent.tasks.families.counting import CATEGORIES, counted_in_steps, plural
from tests.support.tiny import NINES, nines_agent


def pubmedqa_record(i: int, decision: str = "yes") -> dict:
    return {
        "id": f"p{i}",
        "question": f"Does drug {i} help?",
        "contexts": [f"Drug {i} was given.", "Patients improved."],
        "final_decision": decision,
    }


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("family", "answer", "reference", "right"),
    [
        (PUBMEDQA, "Yes, it does.", "yes", True),
        (PUBMEDQA, "Maybe; the evidence is weak, but yes", "yes", False),  # the first label
        (PUBMEDQA, "I cannot say.", "no", False),
        (BBH_FAMILIES["boolean_expressions"], "False", "False", True),
        (BBH_FAMILIES["boolean_expressions"], "It is true.", "False", False),
        (BBH_FAMILIES["date_understanding"], "The answer is (B).", "(B)", True),
        (BBH_FAMILIES["date_understanding"], "B) 12/25/1937", "(B)", True),
        (BBH_FAMILIES["date_understanding"], "(C)", "(B)", False),
        (BBH_FAMILIES["date_understanding"], "B.", "(B)", True),
        (BBH_FAMILIES["date_understanding"], "B\nbecause", "(B)", True),
        (BBH_FAMILIES["date_understanding"], "A date a week later", "(A)", False),
        (BBH_FAMILIES["object_counting"], "I have 8 instruments.", "8", True),
        (BBH_FAMILIES["word_sorting"], "Apple  banana cherry.", "apple banana cherry", True),
        (BBH_FAMILIES["word_sorting"], "banana apple cherry", "apple banana cherry", False),
        (BBH_FAMILIES["dyck_languages"], "] ] >\nand more", "] ] >", True),
        (TEXT, "Paris", "paris", True),
    ],
)
def test_a_family_judges_the_answer_by_its_form(family, answer, reference, right) -> None:
    assert family.judge(answer, reference) is right


@pytest.mark.parametrize(
    ("family", "answer", "said"),
    [
        (PUBMEDQA, "I think yes.", "yes"),
        (BBH_FAMILIES["date_understanding"], "The answer is (B).", "(B)"),
        (BBH_FAMILIES["object_counting"], "There are 8 instruments.", "8"),
        (BBH_FAMILIES["dyck_languages"], "  ] ] >\nmore", "] ] >"),
        (PUBMEDQA, "I cannot say.", None),
    ],
)
def test_the_answer_span_is_what_the_answer_says(family, answer, said) -> None:
    span = family.answer_span(answer)
    assert (answer[slice(*span)] if span else None) == said


def test_files_are_read_as_their_family(tmp_path: Path) -> None:
    pubmed = _jsonl(tmp_path / "pqal.jsonl", [pubmedqa_record(0)])
    bbh = _jsonl(tmp_path / "navigate.jsonl", [{"input": "Go? ", "target": "No"}])
    own = _jsonl(tmp_path / "mine.jsonl", [{"id": "q1", "input": "Capital?", "target": "Rome"}])
    assert read_tasks(pubmed)[0]["family"] == "pubmedqa"
    assert read_tasks(bbh)[0]["family"] == "bbh:navigate"  # by the file's name
    assert read_tasks(own)[0]["family"] == "text"
    # --format overrides what the fields say
    assert read_tasks(own, family=family_named("navigate"))[0]["family"] == "bbh:navigate"
    with pytest.raises(DataError, match="needs the field 'contexts'"):
        read_tasks(
            _jsonl(tmp_path / "bad.jsonl", [{"question": "q"}]), family=PUBMEDQA, strict=True
        )
    with pytest.raises(DataError, match="unknown task family 'nope'"):
        family_named("nope")


def test_detection_and_tags() -> None:
    assert detect_family({"id": "web_of_lies-3", "input": "x", "target": "Yes"}).name == (
        "bbh:web_of_lies"
    )
    assert detect_family({"question": "q", "answer": "a"}) is ARITHMETIC
    assert family_of_tag("+*") is ARITHMETIC and family_of_tag("pubmedqa") is PUBMEDQA
    step = PUBMEDQA.steps(pubmedqa_record(1))[0]
    assert step.family == step.tag == "pubmedqa" and step.reference == "yes"
    assert step.question.startswith("Context: Drug 1 was given.")
    assert step.question.endswith("Answer yes, no or maybe.")
    with pytest.raises(MalformedTask):
        BBH_FAMILIES["navigate"].steps({"input": "  ", "target": "Yes"})


def _simulate_navigation(text: str) -> str:
    """The walk on the complex plane: facing 1j, a right turn multiplies by -1j."""
    position, facing = 0j, 1j
    relative = {"": 1, "forward": 1, "right": -1j, "backward": -1, "left": 1j}
    for n, direction, turn in re.findall(r"Take (\d+) steps? ?(\w*)\.|Turn (\w+)\.", text):
        if turn:
            facing *= {"right": -1j, "around": -1, "left": 1j}[turn]
        else:
            position += facing * relative[direction] * int(n)
    return "Yes" if position == 0 else "No"


def _closes(text: str, target: str) -> bool:
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    stack: list[str] = []
    for token in text.split("Input: ")[1].split():
        if token in pairs:
            stack.append(token)
        else:
            assert pairs[stack.pop()] == token
    return " ".join(pairs[b] for b in reversed(stack)) == target


@pytest.mark.parametrize(
    ("task", "check"),
    [
        # Python's own evaluation: the test may eval the strings it made itself.
        ("boolean_expressions", lambda t, y: str(eval(t.removesuffix(" is"))) == y),
        ("multistep_arithmetic_two", lambda t, y: str(eval(t.removesuffix(" ="))) == y),
        ("word_sorting", lambda t, y: sorted(t.split("List: ")[1].split()) == y.split()),
        ("navigate", lambda t, y: _simulate_navigation(t) == y),
        ("dyck_languages", _closes),
    ],
)
def test_generated_items_carry_exact_labels(task: str, check) -> None:
    family, rng = BBH_FAMILIES[task], random.Random(0)
    sources = ["Sort the following words alphabetically: List: kiwi fig date plum"]
    for pair in family.variants(sources, 200, rng):
        text = pair.prompt.removesuffix("\n" + family.instruction)
        assert check(text, pair.answer), (text, pair.answer)
    if task == "word_sorting":  # drawn from the sources' own words
        assert set(pair.answer.split()) <= {"kiwi", "fig", "date", "plum"}


def test_web_of_lies_and_object_counting_labels() -> None:
    rng = random.Random(1)
    for pair in BBH_FAMILIES["web_of_lies"].variants([], 100, rng):
        sentences = re.findall(
            r"(\w+) (tells the truth|lies|says (\w+) (tells the truth|lies))\.", pair.prompt
        )
        truth: dict[str, bool] = {}
        for name, what, about, claim in sentences:
            truth[name] = (
                what == "tells the truth"
                if not about
                else (truth[about] == (claim == "tells the truth"))
            )
        assert pair.answer == ("Yes" if truth[sentences[-1][0]] else "No")
    counts = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    for pair in BBH_FAMILIES["object_counting"].variants([], 50, rng):
        category = re.search(r"How many ([\w ]+) do I have", pair.prompt).group(1)
        assert category and int(pair.answer) >= 2
        assert int(pair.answer) <= sum(
            counts[w] for w in re.findall(r"\b(a|an|two|three|four|five) ", pair.prompt)
        )
    assert BBH_FAMILIES["date_understanding"].variants([], 5, rng) == []  # no generator


def test_label_metrics_are_macro_scores_with_a_confusion_of_labels() -> None:
    answers = ["yes", "yes", "no", "I do not know", "maybe"]
    references = ["yes", "no", "no", "yes", "maybe"]
    metrics = label_metrics(PUBMEDQA, answers, references)
    assert metrics.accuracy == pytest.approx(3 / 5) and metrics.answered == pytest.approx(4 / 5)
    assert metrics.columns == ["yes", "no", "maybe", NO_LABEL]
    assert metrics.confusion == [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0]]
    # yes: P 1/2 R 1/2; no: P 1 R 1/2; maybe: P 1 R 1
    assert metrics.macro_precision == pytest.approx((0.5 + 1 + 1) / 3)
    assert metrics.macro_recall == pytest.approx((0.5 + 0.5 + 1) / 3)
    numbers = label_metrics(BBH_FAMILIES["object_counting"], ["8", "x"], ["8", "3"])
    assert numbers.accuracy == 0.5 and numbers.macro_f1 is None


def test_the_trigger_takes_a_judge(bow_embeddings) -> None:
    trigger = Trigger(embeddings=bow_embeddings)
    judge = PUBMEDQA.judge
    assert not trigger.score("Yes.", "yes", judge=judge).failed
    assert trigger.score("no", "yes", judge=judge).failed
    # without the judge, "Yes." against "yes" is decided by the anomaly score alone
    assert trigger.score("Yes.", "yes").numeric_match is None


def generated_cluster(family: TaskFamily, seed: int) -> Cluster:
    """A cluster of 12 items the family generates, each with its reference."""
    items = family.variants([], 12, random.Random(seed))
    samples = [
        Sample(i, p.prompt, family.tag, {"reference": p.answer}) for i, p in enumerate(items)
    ]
    return Cluster(1, family.tag, 12, np.ones(4) / 2, frozenset(), 1, None, None, samples)


def test_a_label_cluster_trains_on_generated_items_judged_by_the_family() -> None:
    family = BBH_FAMILIES["navigate"]
    cluster = generated_cluster(family, seed=2)
    config = NINES.replace(train_size=40, val_variants=2).recipe
    recipe = build_recipe(cluster, config, min_train_samples=4, seed=0)
    assert len(recipe.train) == 40 and recipe.judge == family.judge
    assert recipe.max_tokens == family.max_tokens
    assert len(recipe.validation) == 3 + 3 * 2  # the held-out quarter and its variants
    pairs = recipe.train + recipe.validation  # walked in steps, the label last
    assert all(family.answer_of(p.answer) == p.answer[-3:].strip(" .") for p in pairs)
    assert {family.answer_of(p.answer) for p in pairs} == {"Yes", "No"}


def test_a_count_is_written_item_by_item_with_a_running_total() -> None:
    prompt = (
        "I have a flute, two heads of broccoli, three pianos, four stoves, and a mouse. "
        "How many musical instruments do I have?\nReply with the number only."
    )
    assert counted_in_steps(prompt, "4") == "flute 1, pianos 4"
    assert counted_in_steps(prompt, "5") is None  # never a wrong answer in steps
    objects = "I have a car, and two toasters. How many objects do I have?"
    assert counted_in_steps(objects, "3") == "car 1, toasters 3"  # every item counts
    assert counted_in_steps("I have a car and a lamp. How many cars do I have?", "1") is None
    assert counted_in_steps("I have a spaceship. How many objects do I have?", "1") is None
    assert counted_in_steps("What is 2+3?", "5") is None
    assert [plural(w) for w in ("peach", "strawberry", "mouse", "donkey", "stalk of celery")] == [
        "peaches",
        "strawberries",
        "mice",
        "donkeys",
        "stalks of celery",
    ]


def written_in_steps(family: TaskFamily, n: int, seed: int) -> list[tuple[TrainingPair, str]]:
    """``n`` generated items of ``family`` with their answers in steps, each judged to
    say the item's target."""
    written = []
    for pair in family.variants([], n, random.Random(seed)):
        steps = family.in_steps(pair.prompt, pair.answer)
        assert steps is not None and family.judge(steps, pair.answer)
        written.append((pair, steps))
    return written


def test_generated_counts_are_written_in_steps_that_end_in_their_target() -> None:
    categories = set()
    for pair, steps in written_in_steps(BBH_FAMILIES["object_counting"], 200, seed=3):
        assert len(steps.split(", ")) >= 2  # two or more of the category's items
        categories.add(re.search(r"How many ([\w ]+) do I have", pair.prompt).group(1))
    assert categories == set(CATEGORIES)


def test_a_web_of_lies_is_worked_speaker_by_speaker_with_the_label_last() -> None:
    family = BBH_FAMILIES["web_of_lies"]
    prompt = family.prompt(
        "Question: Sherrie lies. Vernell says Sherrie lies. Alexis says Vernell lies. "
        "Does Alexis tell the truth?"
    )
    steps = "Sherrie lies, Vernell truth, Alexis lies. No"
    assert family.in_steps(prompt, "No") == steps and family.answer_of(steps) == "No"
    assert family.in_steps(prompt, "Yes") is None
    assert family.in_steps(family.prompt("Does Sherrie tell the truth?"), "No") is None
    written_in_steps(family, 100, seed=6)


@pytest.mark.parametrize(
    ("task", "text", "target", "steps", "hostile"),
    [
        (
            "boolean_expressions",
            "False or not not ( not True ) and ( True or False ) is",
            "False",
            "F or not not not T and (T or F) = F or F and T = F or F = F. False",
            (
                "__import__('os') is",
                "True + 1 is",
                "( True is",
                "print(True) is",
                "not " * 240 + "True is",  # deeper than the verifier allows
                "not " * 5000 + "True is",  # longer
            ),
        ),
        (
            "multistep_arithmetic_two",
            "((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) =",
            "24",
            "1 + 45 - (-6 + 28) = 46 - 22 = 24",
            (
                "9 ** 9 ** 9 =",
                "(1 / 0) =",
                "__import__('os') =",
                "7 =",
                "-" * 240 + "7 =",  # deeper than the verifier allows
                "1 + " * 2000 + "1 =",  # longer
            ),
        ),
    ],
)
def test_an_expression_is_reduced_a_layer_at_a_time(
    task: str, text: str, target: str, steps: str, hostile: tuple[str, ...]
) -> None:
    """Every operation whose operands are values, at once; a label comes last."""
    family = BBH_FAMILIES[task]
    prompt = family.prompt(text)
    assert family.in_steps(prompt, target) == steps and family.answer_of(steps) == target
    assert family.in_steps(prompt, "other") is None
    for refused in hostile:  # read as nothing, never evaluated, whatever the target
        for claimed in ("True", "False", "7", "1"):
            assert family.in_steps(family.prompt(refused), claimed) is None
    written_in_steps(family, 200, seed=7)


def test_a_subtraction_keeps_the_parentheses_of_its_right_operand() -> None:
    family = BBH_FAMILIES["multistep_arithmetic_two"]
    assert family.in_steps(family.prompt("(7 - (2 - 1)) ="), "6") == "7 - 1 = 6"
    assert family.in_steps(family.prompt("(9 - (5 - (2 - 1))) ="), "5") == "9 - (5 - 1) = 9 - 4 = 5"
    # a minus before a minus: each reduction makes progress (this once looped forever)
    assert family.in_steps(family.prompt("- -5 ="), "5") == "5"
    assert family.in_steps(family.prompt("-(-(2 + 3)) ="), "5") == "-(-5) = 5"


def test_a_walk_is_written_position_by_position_and_turn_by_turn() -> None:
    family = BBH_FAMILIES["navigate"]
    question = "If you follow these instructions, do you return to the starting point? "
    options = "\nOptions:\n- Yes\n- No"
    turning = family.prompt(
        question + "Take 8 steps. Turn left. Take 2 steps. Turn around. "
        "Take 2 steps. Turn left. Take 8 steps." + options
    )
    steps = "0,8; face W; -2,8; face E; 0,8; face N; 0,16. No"
    assert family.in_steps(turning, "No") == steps and family.answer_of(steps) == "No"
    assert family.in_steps(turning, "Yes") is None  # never a wrong answer in steps
    forward = family.prompt(
        question + "Always face forward. Take 1 step right. Take 3 steps left. "
        "Take 2 steps right." + options
    )
    assert family.in_steps(forward, "Yes") == "1,0; -2,0; 0,0. Yes"
    for odd in ("Take 3 steps up.", "Jump.", "", f"Take {'9' * 5000} steps."):
        assert family.in_steps(family.prompt(question + odd + options), "No") is None
    assert family.in_steps(family.prompt("Take 1 step."), "No") is None  # not the question
    walks = written_in_steps(family, 200, seed=8)
    assert {"Always face" in p.prompt for p, _ in walks} == {True, False}  # both kinds
    assert {p.answer for p, _ in walks} == {"Yes", "No"}


def test_a_count_clusters_pairs_are_written_in_steps_unless_turned_off() -> None:
    family = BBH_FAMILIES["object_counting"]
    cluster = generated_cluster(family, seed=4)
    canaries = [(p, None) for p in family.variants([], 4, random.Random(5))]
    config = NINES.replace(train_size=40, val_variants=2).recipe
    recipe = build_recipe(cluster, config, min_train_samples=4, seed=0, gate=canaries)
    for pair in recipe.train + recipe.validation + recipe.gate:
        assert pair.answer == family.in_steps(pair.prompt, str(family.answer_of(pair.answer)))
    assert recipe.max_tokens == family.max_tokens
    plain = build_recipe(
        cluster, replace(config, answers_in_steps=False), min_train_samples=4, seed=0
    )
    assert all(p.answer.isdigit() for p in plain.train + plain.validation)


def test_a_label_clusters_training_pairs_are_balanced_by_label() -> None:
    # failures the base model got wrong are mostly "yes"; the canaries are its right "no"s
    labels = ["yes"] * 15 + ["maybe"] * 3 + ["no"] * 2
    samples = [
        Sample(i, f"Abstract {i}.\n{PUBMEDQA.instruction}", PUBMEDQA.tag, {"reference": label})
        for i, label in enumerate(labels)
    ]
    cluster = Cluster(1, PUBMEDQA.tag, 20, np.ones(4) / 2, frozenset(), 1, None, None, samples)
    canaries = [(TrainingPair(f"Other {i}.", "no"), None) for i in range(4)]
    config = NINES.replace(train_size=60, replay_fraction=0.2).recipe
    recipe = build_recipe(cluster, config, min_train_samples=4, seed=0, rehearsal=canaries)
    counts = Counter(p.answer for p in recipe.train)
    assert set(counts) == {"yes", "maybe", "no"} and len(set(counts.values())) == 1
    unbalanced = build_recipe(
        cluster,
        replace(config, balance_labels=False),
        min_train_samples=4,
        seed=0,
        rehearsal=canaries,
    )
    assert Counter(p.answer for p in unbalanced.train).most_common(1)[0][0] == "yes"


def test_a_pubmedqa_task_fails_trains_and_the_retry_passes(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    """The tiny llama learns "every answer is yes" as it learns nines (tests/support/tiny)."""
    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)
    tasks = [{**pubmedqa_record(i), "family": "pubmedqa"} for i in range(24)]
    summary = agent.run(tasks, stop_when=lambda s: s.retry_success > 0)
    assert summary.adapters_trained >= 1 and summary.retry_success >= 1
    assert summary.labels is not None and summary.labels["family"] == "pubmedqa"
    assert summary.step_em == pytest.approx(summary.labels["accuracy"])
    assert summary.step_em > summary.step_em_first
    record = agent.state(summary.threads[-1])["records"][0]
    assert record["family"] == "pubmedqa" and record["tag"] == "pubmedqa"
    assert agent.store.adapters()[0].tag == "pubmedqa"


def test_the_graph_takes_one_item_of_a_family_without_a_decomposer(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    agent = SageAgent(tmp_path / "sage.db", chat, embeddings=bow_embeddings)
    task = {"id": "q1", "input": "Question: Ana lies. Does Ana lie?", "target": "Yes"}
    agent.graph.invoke(
        {"task": {**task, "family": "bbh:web_of_lies"}},
        {"configurable": {"thread_id": "q1"}},
        context=agent.context(train=False),
    )
    (record,) = agent.state("q1")["records"]
    assert record["family"] == "bbh:web_of_lies" and record["reference"] == "Yes"
    assert record["question"].endswith("Answer Yes or No.")
    result = agent.state("q1")["result"]
    assert result["reference"] == "Yes" and result["correct"] == (
        BBH_FAMILIES["web_of_lies"].judge(result["answer"], "Yes")
    )
    agent.graph.invoke(
        {"task": {"id": "q2", "family": "no-such-family"}},
        {"configurable": {"thread_id": "q2"}},
        context=agent.context(train=False),
    )
    assert "unknown task family 'no-such-family'" in agent.state("q2")["error"]
