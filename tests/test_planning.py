"""SAGE applied to the planner, on the tiny llama: its plans fail, the failures go to the
Trigger Buffer under the tag "plan" with the worked solution's plan as reference, the
LoRA Store tool trains a planner adapter once the cluster is ready, and later questions
are planned with it (routed like a step to its adapter)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from sage_agent.context import AdaptationBudget
from sage_agent.graphs.store_calls import adaptation_seconds
from sage_agent.report import read_thread
from sage_agent.tasks.decompose import LLMDecomposer
from sage_agent.tasks.plans import (
    PLAN_MAX_TOKENS,
    PLAN_STOP,
    PLAN_TAG,
    gold_plan,
    parse_plan,
    plan_matches,
)
from tests.support.tiny import NINES, nines_agent

PLAN_STORE = NINES.replace(epochs=(30,), learning_rates=(1e-2, 3e-2), min_train_samples=6)


def bead_task(i: int) -> dict:
    """A question whose worked solution is the one-step plan "1. How many beads? 4 + 5 = 9"."""
    return {
        "id": f"beads-{i}",
        "question": f"Mia has 4 red beads and 5 blue beads in box {i}. How many beads?",
        "answer": "How many beads? ** 4 + 5 = <<4+5=9>>9 beads.\n#### 9",
    }


def test_the_gold_plan_is_the_solutions_steps() -> None:
    plan = gold_plan(bead_task(0))
    assert plan == "1. How many beads? 4 + 5 = 9"
    assert [s.reference for s in parse_plan(plan, "t")] == ["9"]
    assert gold_plan({"id": "q", "question": "How many?"}) is None  # no solution, no plan


def test_a_plain_solutions_plan_is_its_computations_and_must_reach_its_answer() -> None:
    # GSM8K's plain solutions: the sentence carries its own arithmetic, the plan does not
    task = {
        "id": "maila",
        "question": "Maila reads 12 pages, then twice as many. How many pages left of 120?",
        "answer": "She read 12 x 2 = <<12*2=24>>24 pages today.\n"
        "In all 12 + 24 = <<12+24=36>>36 pages.\nLeft: 120 - 36 = <<120-36=84>>84 pages.\n"
        "#### 84",
    }
    assert gold_plan(task) == "1. 12 * 2 = 24\n2. 12 + 24 = 36\n3. 120 - 36 = 84"
    # an unannotated last step: the annotations compute 36, the answer is 84
    unfinished = {**task, "answer": task["answer"].replace("<<120-36=84>>", "")}
    assert gold_plan(unfinished) is None


def test_failed_plans_train_a_planner_adapter_that_later_plans_use(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)
    agent.store.config = PLAN_STORE
    agent.configure(decomposer=LLMDecomposer(agent.model), adaptation=AdaptationBudget(3600.0))
    summary = agent.run([bead_task(i) for i in range(30)], stop_when=lambda s: s.problems >= 30)
    plans = [agent.state(t).get("plan") for t in summary.threads]
    assert all(p is not None for p in plans)

    # the random model's first plans do not parse: each is a plan failure in the buffer
    first = plans[0]
    assert first["adapter"] is None and first["failure"].startswith("the plan did not parse")
    assert first["buffer"]["status"] in ("buffered", "clustered", "assigned", "noise")
    sample = next(s for s in agent.buffer.points() if s.sample.tag == PLAN_TAG)
    assert sample.sample.payload["reference"] == gold_plan(bead_task(0))
    assert sample.sample.payload["prompt"].endswith(f"Problem: {bead_task(0)['question']}\n")

    # the cluster got ready, and the same LoRA Store tool trained planner adapters on it
    trained = [p for p in plans if "training" in p]
    assert trained and trained[0]["training"]["adapters"], trained[0]["training"]["summary"]
    planners = [a for a in agent.store.adapters() if a.tag == PLAN_TAG]
    assert planners  # (the steps of the plans that now parse fail too, and train "+")
    trainer_thread = summary.threads[plans.index(trained[0])]
    assert read_thread(agent, trainer_thread).path[-2:] == ["finish", "train_planner"]
    # its seconds were charged to the run's budget as the planner's
    planner_seconds = adaptation_seconds(agent.state(trainer_thread), planner=True)
    assert planner_seconds == pytest.approx(trained[0]["training"]["seconds"])

    # later questions are routed to a planner adapter, and its plans parse
    later = plans[plans.index(trained[0]) + 1 :]
    routed = [p for p in later if p["adapter"] in {a.id for a in planners}]
    assert routed, later
    parsed = [
        agent.state(t)
        for t, p in zip(summary.threads, plans, strict=True)
        if p in routed and not agent.state(t).get("error")
    ]
    assert parsed and all(values["result"]["steps"] >= 1 for values in parsed)


def test_the_thread_view_shows_the_plans_fate(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    from sage_agent.report import render_thread

    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings)
    agent.configure(decomposer=LLMDecomposer(agent.model))
    summary = agent.run([bead_task(0)])
    page = render_thread(agent, read_thread(agent, summary.threads[0]))
    assert "<h2>The plan</h2>" in page and "the plan did not parse" in page


def test_a_plan_cluster_trains_on_its_plans_and_their_variants() -> None:
    import numpy as np

    from sage_agent.buffer import Cluster, Sample
    from sage_agent.store.config import RecipeConfig
    from sage_agent.store.recipe import build_recipe
    from sage_agent.tasks.plans import plan_prompt, plan_result

    questions = [
        f"Tom has 4 boxes of {10 + i} pens and gives away 5. How many are left?" for i in range(20)
    ]
    samples = [
        Sample(
            i,
            q,
            PLAN_TAG,
            {
                "prompt": plan_prompt(q),
                "reference": f"1. 4 * {10 + i} = {40 + 4 * i}\n2. {40 + 4 * i} - 5 = {35 + 4 * i}",
            },
        )
        for i, q in enumerate(questions)
    ]
    cluster = Cluster(1, PLAN_TAG, 20, np.ones(3) / 3**0.5, frozenset(), 1, None, None, samples)
    config = replace(RecipeConfig(), train_size=60, failure_repeats=1)
    recipe = build_recipe(cluster, config, min_train_samples=12, seed=0)
    prompts = {s.payload["prompt"] for s in samples}
    variants = [p for p in recipe.train if p.prompt not in prompts]
    assert len(recipe.train) == 60 and len(variants) > 40
    for pair in variants:  # each a new question with its own plan, computed again
        pens, given = (
            int(n) for n in re.findall(r"\d+", pair.prompt.rpartition("Problem: ")[2])[1:]
        )
        assert plan_result(pair.answer) == 4 * pens - given
    assert not {p.prompt for p in recipe.validation} & {p.prompt for p in recipe.train}
    assert any(p.prompt not in prompts for p in recipe.validation)  # variants of held-out plans

    # validation plans are generated as the decomposer generates them: cut at the first
    # blank line, where a model that goes on writes a next problem's plan of its own
    pair = recipe.validation[0]
    going_on = f"{pair.answer}{PLAN_STOP[0]}Problem: more beads\n1. 9 * 9 = 81"
    assert not plan_matches(going_on, pair.answer)

    class GoesOn:
        """Writes the plan and goes on, as ChatSage cuts it at the stop it is given."""

        def __init__(self) -> None:
            self.options: dict = {}

        @contextmanager
        def using_adapter(self, name):
            yield

        def bind(self, **options):
            self.options = options
            return self

        def batch(self, prompts):
            stop = self.options.get("stop", [])
            return [AIMessage(going_on.split(stop[0])[0] if stop else going_on)] * len(prompts)

    model = GoesOn()
    assert recipe.answers_right(model, None, [pair]) == (True,)
    assert model.options == {
        "max_tokens": PLAN_MAX_TOKENS,
        "stop_repeated_line": True,  # and where a plan starts looping
        "stop": list(PLAN_STOP),
    }
