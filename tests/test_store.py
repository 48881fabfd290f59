"""LoRA Store on the tiny llama: CLO, atomic saving and the registry, checksums, routing,
the regression gate, pool limits, and bad input."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from langchain_core.messages import AIMessage

from sage_agent import ChatSage, ConfigError, CorruptAdapter, NotFoundError, StoreError
from sage_agent.database import transaction
from sage_agent.records import TrainingPair
from sage_agent.store import LoRAStore, RouterConfig, StoreConfig, affordable_loss
from sage_agent.store import recipe as recipe_module
from sage_agent.store.judging import Baseline, routes_all
from sage_agent.store.pace import bracket_seconds, expected_seconds
from sage_agent.store.recipe import Recipe, build_recipe
from sage_agent.store.search import Trial, first_bracket
from sage_agent.tasks.steps import ANSWER_MAX_TOKENS
from sage_agent.training.validation import generate
from tests.support.stores import LEARNABLE, make_cluster


def _store_with(chat: ChatSage, tmp_path: Path, embeddings, **changes) -> LoRAStore:
    """A store with LEARNABLE's search space and ``changes`` to its config."""
    config = LEARNABLE.replace(**changes)
    return LoRAStore(tmp_path / "db.sqlite", tmp_path / "a", chat, config, embeddings=embeddings)


@pytest.fixture
def chat(tiny_model_dir: Path) -> ChatSage:
    return ChatSage(model=str(tiny_model_dir), max_tokens=4)


@pytest.fixture
def store(chat: ChatSage, tmp_path: Path, bow_embeddings) -> LoRAStore:
    return LoRAStore(
        tmp_path / "sage.sqlite", tmp_path / "adapters", chat, LEARNABLE, embeddings=bow_embeddings
    )


def test_optimize_keeps_three_ranked_adapters(
    store: LoRAStore, chat: ChatSage, bow_embeddings
) -> None:
    events = []
    kept = store.optimize(make_cluster(bow_embeddings), progress=events.append)
    assert [k.position for k in kept] == [1, 2, 3]
    assert all(k.val_em > k.base_val_em for k in kept)  # a lower bound of generation beats it
    for record in kept:
        folder = Path(record.path)
        assert folder.parent == store.registry.root and folder.name == record.id
        assert {p.name for p in folder.iterdir()} == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
    assert not list(store.registry.root.glob(".tmp-*"))
    assert chat.adapters == {}  # no trial adapter left in memory
    trials = store.registry.trials()
    assert len(trials) == 5  # every trial logged, kept or not
    assert sum(t.outcome == "kept" for t in trials) == 3
    names = [e["event"] for e in events]
    assert names.count("trial_started") == 5
    assert names.count("adapter_kept") == 3
    # Successive halving: all 5 ranked after a quarter of their training, the better
    # half of each bracket (2 of the 3 random ones, 1 of the 2 neighbours) after all of it.
    rungs = [e["rung"] for e in events if e["event"] == "trial_done"]
    assert rungs.count(0) == 5 and rungs.count(1) == 3
    assert sorted(t.rung for t in trials) == [0, 0, 1, 1, 1]
    kept_trials = [t for t in trials if t.outcome == "kept"]
    ranked = sorted((t for t in trials if t.generated_em is not None), key=lambda t: t.created)
    assert [(-t.val_em, t.val_loss) for t in ranked] == sorted(
        (-t.val_em, t.val_loss) for t in ranked
    )
    # A kept trial's record carries its generated EM, or the teacher-forced bound that
    # already beat the base model when it was not generated.
    for trial in kept_trials:
        record = store.get(trial.adapter_id)
        if trial.generated_em is None:
            assert record.val_em == trial.val_em > record.base_val_em
        else:
            assert record.val_em == trial.generated_em and 0 <= trial.agreement <= 1
    # 3 random trials, then the neighbourhood of the best: its other rank and, where the
    # learning-rate range allows, half and double its rate, up to the budget of 5.
    configs = [str(sorted(t.config.items())) for t in trials]
    assert len(set(configs)) == 5


def test_training_is_augmented_with_verifier_variants(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(
        chat, tmp_path, bow_embeddings, train_size=45, val_variants=2, failure_repeats=2
    )
    cluster = make_cluster(bow_embeddings)
    for sample in cluster.samples:  # "Compute i+(9-i). apples" with its expression
        sample.payload["expression"] = sample.text.split()[1].rstrip(".")
    recipe = build_recipe(cluster, store.config.recipe, min_train_samples=12, seed=0)
    train, val = recipe.train, recipe.validation
    assert 5 < len(val) <= 5 * 3 and len(train) == 15 * 3
    real = {s.text for s in cluster.samples}
    held_out = {p.prompt for p in val[:5]}
    assert held_out <= real and not held_out & {p.prompt for p in train}  # no leak
    assert not {p.prompt for p in val[5:]} & {p.prompt for p in train}  # variants of val only
    # Answers are written as equations (answer_format="equation"): "3 + 6 = 9".
    expressions = {s.text: s.payload["expression"] for s in cluster.samples}
    for pair in train[:30]:  # the 15 training samples, twice
        left, right = expressions[pair.prompt].split("+")
        assert pair.answer == f"{left} + {right} = 9"
    for pair in train[30:]:  # variants: the same shape, new numbers, computed answers
        left, right = pair.prompt.split()[1].rstrip(".").split("+")
        assert pair.answer == f"{left} + {right} = {int(left) + int(right)}"


def test_training_rehearses_canaries_the_gate_never_sees(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(
        chat, tmp_path, bow_embeddings, train_size=40, replay_fraction=0.25, failure_repeats=2
    )
    canaries = [TrainingPair(f"Compute {i}*2. pears", str(2 * i)) for i in range(1, 9)]
    store.add_canary(canaries, tag="+", expressions=[f"{i}*2" for i in range(1, 9)])
    cluster = make_cluster(bow_embeddings)
    gate, replay = store.canaries.split("+", rehearse=True)
    assert len(gate) == len(replay) == 4
    assert store.canaries.split("+", rehearse=True) == (gate, replay)  # seeded: the same again
    assert not {p.prompt for p, _ in gate} & {p.prompt for p, _ in replay}
    recipe = build_recipe(
        cluster, store.config.recipe, min_train_samples=12, seed=0, rehearsal=replay, gate=gate
    )
    train, val = recipe.train, recipe.validation
    assert len(train) == 40
    failures, rehearsal = train[:30], train[30:]
    assert all(p.answer == "9" for p in failures)  # 15 failures twice, no variants here
    assert {p.prompt for p in rehearsal[:4]} == {p.prompt for p, _ in replay}
    variants = [p for p in rehearsal if p.prompt not in {c.prompt for c, _ in replay}]
    assert len(variants) == 6  # rehearsal topped up with verifier-labelled variants
    for pair in variants:
        left, right = pair.prompt.split()[1].rstrip(".").split("*")
        assert pair.answer == f"{left} * {right} = {int(left) * int(right)}"
    for pair in rehearsal[:4]:  # the replayed canaries themselves, as equations
        number = int(pair.prompt.split()[1].split("*")[0])
        assert pair.answer == f"{number} * 2 = {2 * number}"
    # Neither the gate nor a held-out failure is trained on, not even as a variant.
    assert not ({p.prompt for p, _ in gate} | {p.prompt for p in val}) & {p.prompt for p in train}


def test_a_version_1_file_is_migrated(chat, tmp_path, bow_embeddings) -> None:
    from sage_agent.database import open_database

    store = LoRAStore(tmp_path / "new.sqlite", tmp_path / "a", chat, LEARNABLE, bow_embeddings)
    kept = store.optimize(make_cluster(bow_embeddings))[0]
    # The same adapters as version 1 stored them: a "rank" column, and the folder as it was
    # given (relative to the working directory of the time); canaries had no expression.
    old = open_database(tmp_path / "old.sqlite")
    old["meta"].update("schema_version", {"value": "1"})
    old["adapters"].insert_all(
        [
            {k: v for k, v in row.items() if k not in ("position", "route_all", "cluster_version")}
            | {"rank": row["position"]}
            | {"path": f"some/old/folder/{row['id']}"}
            for row in store.registry.db["adapters"].rows
        ],
        pk="id",
    )
    old["canary"].create({"prompt": str, "answer": str, "tag": str}, pk="prompt")
    old["canary"].insert({"prompt": "Compute 2+2.", "answer": "4", "tag": "+"})
    added = {"curve", "rung", "generated_em", "agreement"}  # by versions 3 and 4
    old["trials"].insert_all(
        [{k: v for k, v in r.items() if k not in added} for r in store.registry.db["trials"].rows],
        pk="id",
    )
    old.close()
    (tmp_path / "a" / ".sage-database").unlink()  # version 1 marked no folder: adopted

    migrated = LoRAStore(tmp_path / "old.sqlite", tmp_path / "a", chat, LEARNABLE, bow_embeddings)
    record = migrated.get(kept.id)
    assert record.position == 1 and record.path == kept.path
    assert record.route_all is False  # version 5's column: routed as before
    assert record.cluster_version is None and kept.cluster_version == 1  # version 7's
    assert migrated.load(kept.id) == kept.id  # found, and its checksum still matches
    assert all(t.curve == [] and t.rung is None for t in migrated.registry.trials())
    assert all(len(t.curve) > 0 for t in store.registry.trials())  # loss per optimiser step
    migrated.add_canary([TrainingPair("Compute 3+3.", "6")], "+", expressions=["3+3"])
    assert migrated.canaries.count("+") == 2
    with pytest.raises(ValueError, match="1 canaries but 2 expressions"):
        migrated.add_canary([TrainingPair("Compute 4+4.", "8")], "+", expressions=["4+4", "x"])


def test_registry_survives_a_new_store(
    store: LoRAStore, chat: ChatSage, tmp_path: Path, bow_embeddings
) -> None:
    kept = store.optimize(make_cluster(bow_embeddings))
    again = LoRAStore(
        tmp_path / "sage.sqlite", tmp_path / "adapters", chat, LEARNABLE, embeddings=bow_embeddings
    )
    assert again.adapters() == kept
    assert again.get(kept[0].id).checksum == kept[0].checksum


def _set_lift(store: LoRAStore, adapters, val_em: float, base_val_em: float) -> None:
    with transaction(store.registry.db):
        for adapter in adapters:
            store.registry.db["adapters"].update(
                adapter.id, {"val_em": val_em, "base_val_em": base_val_em}
            )


def test_reoptimizing_a_cluster_retires_its_old_adapters(store, bow_embeddings) -> None:
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 0.1, 0.1)  # no lift over the base: any kept trial replaces them
    second = store.optimize(make_cluster(bow_embeddings, version=2))
    assert second
    assert [a.id for a in store.adapters(1)] == [a.id for a in second]
    assert not any(Path(a.path).exists() for a in first)


def test_a_retrain_that_lifts_less_keeps_the_old_adapters(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, warm_start=False)
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 1.0, -0.5)  # a lift of 1.5: more than any trial can reach
    assert store.optimize(make_cluster(bow_embeddings, version=2)) == []
    assert [a.id for a in store.adapters(1)] == [a.id for a in first]
    assert all(Path(a.path).exists() for a in first)
    outcomes = [t.outcome for t in store.registry.trials(1) if t.cluster_version == 2]
    assert outcomes and all(
        "below the 1.500 of the adapters it would replace" in o or "does not beat the base" in o
        for o in outcomes
    )
    assert any("it would replace" in o for o in outcomes)


def test_a_warm_retrain_is_held_to_the_old_adapters_lift_on_its_own_split(
    store, bow_embeddings
) -> None:
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 1.0, -0.5)  # on their own split: a lift no trial can reach
    store.optimize(make_cluster(bow_embeddings, version=2))
    retrain = [t for t in store.registry.trials(1) if t.cluster_version == 2]
    warm = [t for t in retrain if t.config["init_from"]]
    cold = [t for t in retrain if not t.config["init_from"]]
    assert warm and cold
    # A cold trial faces the 1.5; a warm one the old adapters' lift on the new split.
    assert not any("1.500" in t.outcome for t in warm)
    assert all(t.outcome != "kept" for t in cold)


def test_the_bar_a_trial_must_reach_to_replace() -> None:
    from sage_agent.store.judging import ToReplace
    from sage_agent.training.trainer import LoRATrainConfig

    bar = ToReplace(own_split=0.5, this_split=0.1)
    assert bar.lift(LoRATrainConfig()) == 0.5
    assert bar.lift(LoRATrainConfig(init_from="kept/adapter")) == 0.1


def test_a_retrain_starts_from_the_tags_best_configuration(store, bow_embeddings) -> None:
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 0.1, 0.1)
    store.optimize(make_cluster(bow_embeddings, version=2))
    retrain = [t for t in store.registry.trials(1) if t.cluster_version == 2]
    best = first[0].config
    started = retrain[0].config
    assert (started["rank"], started["learning_rate"]) == (best["rank"], best["learning_rate"])
    assert started["init_from"] == first[0].path  # from the kept adapter's weights
    assert not Path(first[0].path).exists()  # retired once the retrain kept its own


def test_a_search_rerun_of_the_same_version_starts_cold(store, bow_embeddings) -> None:
    # As after a kill between registering an adapter and marking the cluster trained: the
    # resumed run searches the same version again, and must train what an unbroken run did.
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 0.1, 0.1)
    searched = len(store.registry.trials(1))
    store.optimize(make_cluster(bow_embeddings, version=1))
    rerun = store.registry.trials(1)[searched:]
    assert rerun and all(t.config["init_from"] is None for t in rerun)


def test_a_retrain_without_warm_start_trains_afresh(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, warm_start=False)
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 0.1, 0.1)
    store.optimize(make_cluster(bow_embeddings, version=2))
    retrain = [t for t in store.registry.trials(1) if t.cluster_version == 2]
    assert retrain[0].config["rank"] == first[0].config["rank"]
    assert all(t.config["init_from"] is None for t in retrain)


def test_a_retrain_whose_earlier_adapter_is_corrupt_searches_on(store, bow_embeddings) -> None:
    first = store.optimize(make_cluster(bow_embeddings, version=1))
    _set_lift(store, first, 0.1, 0.1)
    for record in first:
        (Path(record.path) / "adapter_model.safetensors").write_bytes(b"not weights")
    store.optimize(make_cluster(bow_embeddings, version=2))
    retrain = [t for t in store.registry.trials(1) if t.cluster_version == 2]
    failed = [t for t in retrain if t.outcome.startswith("failed: AdapterError")]
    # the kept configuration and its neighbours of the same rank start from its weights
    assert failed and {t.config["init_from"] for t in failed} == {first[0].path}
    assert len(retrain) > len(failed)  # the search went on without them


def test_the_first_bracket_is_the_earlier_best_and_its_neighbourhood() -> None:
    from sage_agent.store.config import SearchConfig

    config = SearchConfig(ranks=(8, 16, 32), learning_rates=(5e-4, 2e-3), n_random=6)
    rng = random.Random(0)
    fresh = first_bracket(config, [], rng, seed=3)
    assert len(fresh) == 6 and all(c.seed == 3 for c in fresh)
    earlier = {"rank": 16, "alpha": 32.0, "learning_rate": 1e-3, "epochs": 99, "batch_size": 4}
    earlier["init_from"] = "kept/adapter"
    reused = first_bracket(config, [earlier, earlier], rng, seed=3)
    assert [(c.rank, c.learning_rate) for c in reused[:5]] == [
        (16, 1e-3),
        (8, 1e-3),
        (32, 1e-3),
        (16, 5e-4),
        (16, 2e-3),
    ]
    assert reused[1].alpha == 16.0  # alpha follows the rank
    # the earlier adapter's weights where the shape is its own: not at another rank
    assert [c.init_from for c in reused[:5]] == ["kept/adapter", None, None] + ["kept/adapter"] * 2
    # this search's epochs and batch size, not the earlier one's; topped up at random
    assert (reused[0].epochs, reused[0].batch_size) == (config.epochs[0], config.batch_size)
    assert len(reused) == 6


def test_route_finds_the_nearest_cluster(store: LoRAStore, bow_embeddings) -> None:
    assert store.route("Compute 3+4. apples") == []  # nothing registered yet
    kept = store.optimize(make_cluster(bow_embeddings))
    assert [a.id for a in store.route("Compute 3+4. apples")] == [a.id for a in kept]
    assert store.route("Compute 3+4. apples", tag="*") == []
    # a mixed step ("+*") has no cluster of its own: its operators' clusters take it
    assert [a.id for a in store.route("Compute 3+4*2. apples", tag="+*")] == [a.id for a in kept]
    assert store.route("Compute 3+4. apples", tag="default") == []
    store.router.config = RouterConfig(route_by_operators=False)
    assert store.route("Compute 3+4*2. apples", tag="+*") == []
    assert store.route("an unrelated sentence about weather") == []
    # nearest: the nearest cluster whatever its distance (a planner serves every question)
    far = store.route("an unrelated sentence about weather", nearest=True)
    assert [a.id for a in far] == [a.id for a in kept]


def test_a_one_step_familys_tag_routes_to_its_nearest_cluster(store, bow_embeddings) -> None:
    kept = store.optimize(make_cluster(bow_embeddings))
    with transaction(store.registry.db):  # as if trained on PubMedQA's failures
        for adapter in kept:
            store.registry.db["adapters"].update(adapter.id, {"tag": "pubmedqa"})
    far = "an abstract about a trial of a new drug"  # no word in common with the cluster
    assert [a.id for a in store.route(far, tag="pubmedqa")] == [a.id for a in kept]
    assert store.route(far, tag="navigate") == []  # another family's tag: its own clusters
    store.router.config = RouterConfig(route_whole_families=False)
    assert store.route(far, tag="pubmedqa") == []


def test_unsure_routes_only_doubtful_base_answers(chat, tmp_path, bow_embeddings) -> None:
    def answer(text: str, logprob: float) -> AIMessage:
        tokens = [{"token": text, "logprob": logprob}]
        return AIMessage(text, response_metadata={"logprobs": {"content": tokens}})

    store = _store_with(chat, tmp_path, bow_embeddings, route_below=-1.0)
    assert not store.unsure(answer("3+4 = 7", -0.2))
    assert store.unsure(answer("3+4 = 8", -2.5))
    assert store.unsure(answer("seven", -0.1))  # no number: nothing the base model is sure of
    assert store.unsure(AIMessage("7"))  # no logprobs: cannot tell, so route
    # a label family: the confidence is the label's, and a label answer has no number
    sure_label = AIMessage(
        "Yes, it is.",
        response_metadata={
            "logprobs": {
                "content": [{"token": "Yes", "logprob": -0.1}, {"token": ", it is.", "logprob": -3}]
            }
        },
    )
    assert not store.unsure(sure_label, "pubmedqa")
    assert store.unsure(sure_label)  # read as arithmetic: no number, so routed
    assert store.unsure(answer("Perhaps.", -0.1), "pubmedqa")  # names no label
    (tmp_path / "every").mkdir()
    every = _store_with(chat, tmp_path / "every", bow_embeddings, route_below=None)
    assert every.unsure(answer("3+4 = 7", -0.2))

    # the contest: an adapter's answer stands where the model is surer of what it says
    assert store.surer(answer("3+4 = 7", -0.2), answer("3+4 = 8", -2.5))
    assert not store.surer(answer("3+4 = 8", -2.5), answer("3+4 = 7", -0.2))
    assert not store.surer(answer("seven", -0.01), answer("3+4 = 8", -2.5))  # says no number
    assert store.surer(answer("3+4 = 7", -3.0), answer("seven", -0.01))
    assert store.surer(sure_label, answer("Perhaps.", -0.01), "pubmedqa")


def test_load_verifies_the_checksum(store: LoRAStore, chat: ChatSage, bow_embeddings) -> None:
    best, second, _ = store.optimize(make_cluster(bow_embeddings))
    assert store.load(best.id) == best.id and best.id in chat.adapters
    weights = Path(second.path) / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated on disk
    with pytest.raises(CorruptAdapter, match="does not match its checksum"):
        store.load(second.id)
    assert store.get(second.id).status == "broken"
    assert second.id not in chat.adapters
    with pytest.raises(CorruptAdapter, match="broken"):
        store.load(second.id)
    assert [a.id for a in store.adapters(1)] == [best.id, store.adapters(1)[1].id]


def test_loaded_adapters_are_an_lru_of_max_loaded(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, max_loaded=2)
    ids = [a.id for a in store.optimize(make_cluster(bow_embeddings))]
    store.load(ids[0])
    store.load(ids[1])
    store.load(ids[0])  # ids[0] is now the most recent
    store.load(ids[2])  # evicts ids[1]
    assert set(chat.adapters) == {ids[0], ids[2]}


def test_load_after_the_shared_model_dropped_the_adapter(store, chat, bow_embeddings) -> None:
    best = store.optimize(make_cluster(bow_embeddings))[0]
    store.load(best.id)
    chat.delete_adapter(best.id)  # another user of the same ChatSage frees it
    assert store.load(best.id) == best.id and best.id in chat.adapters
    store.unload()
    assert chat.adapters == {}
    assert store.load(best.id) == best.id and best.id in chat.adapters


def test_pool_limit_deletes_files_and_rows_together(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, max_on_disk=4)
    first = store.optimize(make_cluster(bow_embeddings, cluster_id=1))
    store.record_use(first[0].id, won=True)
    second = store.optimize(make_cluster(bow_embeddings, cluster_id=2, words="pears"))
    remaining = {a.id for a in store.adapters()}
    assert len(remaining) == 4
    assert first[0].id in remaining  # recently used survives
    assert {a.id for a in second} <= remaining
    on_disk = {p.name for p in store.registry.root.iterdir() if not p.name.startswith(".")}
    assert on_disk == remaining
    used = store.get(first[0].id)
    assert (used.uses, used.wins) == (1, 1) and used.last_used is not None


def test_regression_gate_discards_adapters_that_forget(
    chat: ChatSage, tmp_path: Path, bow_embeddings
) -> None:
    # No rehearsal, so every canary gates and nothing teaches the adapter to keep them.
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, canary_margin=0.05)
    _add_own_answers_as_canaries(store, chat, 6)
    kept = store.optimize(make_cluster(bow_embeddings))  # adapters learn to answer "9"
    assert kept == []
    outcomes = [t.outcome for t in store.registry.trials()]
    assert any("canary EM 0.000 is below the base 1.000" in o for o in outcomes), outcomes
    assert list(store.registry.root.glob("[!.]*")) == []


def _add_own_answers_as_canaries(store: LoRAStore, chat: ChatSage, n: int) -> None:
    """A canary is what the base model answers right: here, its own answers to other
    prompts."""
    prompts = [f"Compute {i}*{i}. pears" for i in range(n)]
    answers = chat.bind(max_tokens=ANSWER_MAX_TOKENS).batch(prompts)  # as generate() does
    store.add_canary(
        [TrainingPair(p, m.text) for p, m in zip(prompts, answers, strict=True)], tag="+"
    )


def _recorded_baselines(monkeypatch) -> list[Baseline]:
    """Every Baseline the store's searches compute from now on, in order."""
    bases: list[Baseline] = []
    baseline = LoRAStore._baseline
    monkeypatch.setattr(
        LoRAStore, "_baseline", lambda self, *args: bases.append(baseline(self, *args)) or bases[-1]
    )
    return bases


@pytest.mark.parametrize(("tag_failures", "failures"), [(None, 20), (5, 20), (74, 74)])
def test_the_tag_accuracy_counts_the_tags_failures_not_the_clusters(
    chat, tmp_path, bow_embeddings, monkeypatch, tag_failures, failures
) -> None:
    # 6 canaries; a cluster of 20 failures holds only part of the tag's, and never
    # more than the tag has failed
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0)
    _add_own_answers_as_canaries(store, chat, 6)
    bases = _recorded_baselines(monkeypatch)
    store.optimize(make_cluster(bow_embeddings), tag_failures=tag_failures)
    assert bases[0].tag_accuracy == pytest.approx(6 / (6 + failures))


def test_the_gate_generates_only_when_its_teacher_forced_bound_fails(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, canary_margin=1.0)
    _add_own_answers_as_canaries(store, chat, 6)
    generated: list[int] = []
    answers_right = Recipe.answers_right

    def counting_answers_right(self, model, adapter, pairs):
        generated.append(len(pairs))
        return answers_right(self, model, adapter, pairs)

    monkeypatch.setattr(Recipe, "answers_right", counting_answers_right)
    kept = store.optimize(make_cluster(bow_embeddings))
    assert kept
    trials = store.registry.trials()
    confirmed = [t for t in trials if t.generated_em is not None]
    # each confirmed trial's validation (the base model's answers are generated apart):
    # a margin of 1 passes every bound, so no trial's canaries are generated
    assert len(generated) == len(confirmed)


def test_the_base_models_answers_are_generated_once_per_prompt(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, max_trials=1)
    _add_own_answers_as_canaries(store, chat, 6)
    prompts: list[str] = []

    def counting(chat, adapter, batch, **options):
        if adapter is None:  # the base model's, not a trial's
            prompts.extend(batch)
        return generate(chat, adapter, batch, **options)

    monkeypatch.setattr(recipe_module, "generate", counting)
    bases = _recorded_baselines(monkeypatch)
    cluster = make_cluster(bow_embeddings)
    store.optimize(cluster)
    first = len(prompts)
    gate, _ = store.canaries.split("+", rehearse=False)
    assert first == len(set(prompts)) >= len(gate) + 1  # canaries and validation, once each
    store.optimize(cluster)  # the same canaries and validation pairs
    assert len(prompts) == first
    assert bases[1].em == bases[0].em and bases[1].canary_right == bases[0].canary_right
    assert bases[1].routed == bases[0].routed and bases[1].val_right == bases[0].val_right
    # a fresh store (another process) generates them again, to the same verdicts
    fresh = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, max_trials=1)
    fresh.optimize(cluster)
    assert len(prompts) == 2 * first and bases[2] == bases[0]


@pytest.mark.parametrize("confirm_all", [False, True])
def test_validation_is_generated_only_where_the_teacher_forced_bound_does_not_decide(
    chat, tmp_path, bow_embeddings, monkeypatch, confirm_all
) -> None:
    store = _store_with(
        chat, tmp_path, bow_embeddings, replay_fraction=0.0, confirm_all=confirm_all
    )
    bases = _recorded_baselines(monkeypatch)
    store.optimize(make_cluster(bow_embeddings))
    considered = [t for t in store.registry.trials() if not t.outcome.startswith("ranked below")]
    # the best trial's bound (teacher-forced EM 1.0) beats the base model's 0.0
    assert max(t.val_em for t in considered) > bases[0].em
    for trial in considered:
        decided = trial.val_em > bases[0].em and not confirm_all
        assert (trial.generated_em is None) is decided, trial
        if trial.outcome == "kept":
            assert store.get(trial.adapter_id).val_em == (
                trial.val_em if decided else trial.generated_em
            )


def test_a_canary_right_teacher_forced_is_right_generated(chat, tmp_path, bow_embeddings) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, canary_margin=1.0)
    _add_own_answers_as_canaries(store, chat, 6)
    kept = store.optimize(make_cluster(bow_embeddings))
    assert kept
    gate, _ = store.canaries.split("+", rehearse=False)
    recipe = build_recipe(
        make_cluster(bow_embeddings), store.config.recipe, min_train_samples=12, seed=0, gate=gate
    )
    name = store.load(kept[0].id)
    forced = recipe.gate_forced(chat, name, range(len(gate)))
    generated = recipe.answers_right(chat, name, [p for p, _ in gate])
    assert all(g for f, g in zip(forced, generated, strict=True) if f)


def test_the_gate_judges_only_the_canaries_routing_hands_the_adapter(
    chat: ChatSage, tmp_path: Path, bow_embeddings, monkeypatch
) -> None:
    # As in test_regression_gate_discards_adapters_that_forget, but the base model is sure
    # of every canary: routing keeps its answers, so forgetting them costs nothing.
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, canary_margin=0.05)
    _add_own_answers_as_canaries(store, chat, 6)
    monkeypatch.setattr(store.router, "unsure", lambda _answer, _tag=None: False)
    kept = store.optimize(make_cluster(bow_embeddings))
    assert kept and all(record.canary_em == 1.0 for record in kept)


def test_canary_em_as_routed() -> None:
    base = Baseline(
        em=0.1,
        canaries=[TrainingPair(f"Compute {i}+1.", str(i + 1)) for i in range(4)],
        canary_right=(True, True, True, False),
        routed=(1, 3),
    )
    assert base.canary_em == 0.75
    # canaries 0 and 2 keep the base model's right answers; the adapter misses 1, fixes 3
    assert base.canary_em_as_routed([False, True]) == 0.75
    assert base.canary_em_as_routed([True, True]) == 1.0


def test_val_em_as_routed_and_expected_accuracy() -> None:
    from sage_agent.store.gate import expected_accuracy

    base = Baseline(
        em=0.25,
        canaries=[],
        canary_right=(),
        routed=(),
        val_right=(True, False, False, False),
        val_unsure=(2, 3),
    )
    # pair 0 keeps the base model's right answer, pair 1 its sure wrong one
    assert base.val_em_as_routed([False, True, True, False]) == 0.5
    assert expected_accuracy(0.8, 0.9, 0.5) == pytest.approx(0.82)


@pytest.mark.parametrize(
    ("tag_accuracy", "all_canaries", "expected"),
    [
        # '/': the base model is rarely right, its sure answers mostly wrong
        (0.1, [True] * 4 + [False], True),
        # '*': the base model is mostly right; answering its sure canaries loses them
        (0.7, [True, False, False, False], False),
        # however right the base model, an adapter that loses no canary answers them all
        (0.9, [True] * 5, True),
    ],
)
def test_an_adapter_routes_all_where_that_is_expected_to_answer_more_right(
    store: LoRAStore, bow_embeddings, tag_accuracy, all_canaries, expected
) -> None:
    canaries = [TrainingPair(f"Compute {i}+1.", str(i + 1)) for i in range(5)]
    base = Baseline(
        em=0.0,
        canaries=canaries,
        canary_right=(True,) * 5,
        routed=(4,),
        val_right=(False,) * 4,
        val_unsure=(0, 1),
        tag_accuracy=tag_accuracy,
    )
    # right on every validation pair: 100% routed all, 50% as routed (two are sure)
    right = (True,) * 4
    recipe = SimpleNamespace(gate_forced=lambda _chat, _name, indices: all_canaries)
    # as routed: the sure canaries keep the base model's answers (canary EM 1.0)
    assert routes_all(store.model, "apples", "t", recipe, base, right, 1.0) is expected


def test_affordable_loss() -> None:
    assert affordable_loss(0.4, 0.5) == pytest.approx(0.75)  # 0.4 * 0.25 == 0.6 * 0.5 / 3
    assert affordable_loss(0.9, 0.5) == pytest.approx(0.5 / 9)
    assert affordable_loss(0.0, 0.1) == math.inf  # nothing right on the tag to lose


@pytest.mark.parametrize(("canaries", "kept"), [(6, True), (400, False)])
def test_default_gate_weighs_the_loss_against_the_gain(
    chat: ChatSage, tmp_path: Path, bow_embeddings, canaries: int, kept: bool
) -> None:
    # The adapters fix the 20 failures and break every canary. With 6 passes on the tag
    # (p = 6 / 26) that is a net gain; with 400 (p = 400 / 420) it is not.
    store = _store_with(chat, tmp_path, bow_embeddings, replay_fraction=0.0, canary_size=6)
    _add_own_answers_as_canaries(store, chat, canaries)
    assert bool(store.optimize(make_cluster(bow_embeddings))) is kept


def _training_clock(monkeypatch) -> list[float]:
    """A clock that only training moves, 10 s per epoch, as the search and the store
    read it. A LEARNABLE trial trains 6 epochs of one optimiser step: 20 s to its first
    rung (a quarter: 2 steps), 40 s more to the end."""
    import sage_agent.store.search as search_module
    import sage_agent.store.store as store_module

    clock = [0.0]

    class SlowRun(search_module.LoRARun):
        fake_seconds = 0.0

        def train(self, steps=None, progress=None):
            before = len(self.losses)
            super().train(steps, progress)
            spent = 10.0 * (len(self.losses) - before) / self.steps_per_epoch
            clock[0] += spent
            self.fake_seconds += spent
            self.seconds = self.fake_seconds
            return self.result()

    fake_time = SimpleNamespace(perf_counter=lambda: clock[0], time=lambda: clock[0])
    monkeypatch.setattr(search_module, "LoRARun", SlowRun)
    monkeypatch.setattr(search_module, "time", fake_time)
    monkeypatch.setattr(store_module, "time", fake_time)
    return clock


@pytest.mark.parametrize(
    ("budget", "sized", "trials", "promoted"),
    [
        (30.0, True, 1, 0),
        (105.0, True, 2, 1),
        (105.0, False, 3, 1),
        (145.0, True, 3, 2),
        (1000.0, True, 5, 3),
    ],
)
def test_no_trial_starts_that_the_budget_cannot_finish(
    chat, tmp_path, bow_embeddings, monkeypatch, budget, sized, trials, promoted
) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, sized_brackets=sized)
    clock = _training_clock(monkeypatch)
    store.optimize(make_cluster(bow_embeddings), max_seconds=budget)
    # 30 s: the first trial (20 s); its second rung would end at 60 s.
    # 105 s, sized: a bracket of 2 (two first rungs, one second: 80 s); of 3 it would
    # take 140 s. The neighbours' bracket of one would take 60 s more: not started.
    # 105 s, not sized: three first rungs (60 s) and one second rung (100 s).
    # 145 s: the bracket of 3 (140 s): two promoted.
    logged = store.registry.trials()
    assert (len(logged), sum(t.rung == 1 for t in logged)) == (trials, promoted)
    assert clock[0] <= budget


def test_the_search_budget_counts_the_base_model_evaluation(
    store: LoRAStore, bow_embeddings, monkeypatch
) -> None:
    clock = _training_clock(monkeypatch)
    baseline = store._baseline

    def slow_baseline(*args):  # 50 s of base-model evaluation before the first trial
        clock[0] += 50.0
        return baseline(*args)

    monkeypatch.setattr(store, "_baseline", slow_baseline)
    store.optimize(make_cluster(bow_embeddings), max_seconds=100.0)
    # 50 s left after the base model: the first trial's first rung (20 s), and nothing
    # more, since its second rung (40 s) does not fit. Counted from the search's start
    # (100 s) it would be trained to the end.
    logged = store.registry.trials()
    assert (len(logged), sum(t.rung == 1 for t in logged)) == (1, 0)


def test_the_leader_trains_on_with_the_seconds_the_brackets_left(
    store: LoRAStore, bow_embeddings, monkeypatch
) -> None:
    clock = _training_clock(monkeypatch)
    store.optimize(make_cluster(bow_embeddings), max_seconds=50.0)
    # The first rung (2 steps, 20 s) leaves 30 s: not the 40 s of its second rung, but
    # three more optimiser steps of 10 s, ranked again.
    (logged,) = store.registry.trials()
    assert len(logged.curve) == 5 and logged.rung == 0
    assert clock[0] == 50.0


def test_without_training_the_leader_on_the_seconds_stay_unspent(
    chat, tmp_path, bow_embeddings, monkeypatch
) -> None:
    store = _store_with(chat, tmp_path, bow_embeddings, train_leader_on=False)
    clock = _training_clock(monkeypatch)
    store.optimize(make_cluster(bow_embeddings), max_seconds=50.0)
    (logged,) = store.registry.trials()
    assert len(logged.curve) == 2 and clock[0] == 20.0


def test_a_family_rule_sets_the_batch_the_epochs_and_the_leader_samples() -> None:
    from sage_agent.store.config import SearchConfig
    from sage_agent.store.search import family_search
    from sage_agent.tasks.families.base import RuleTraining

    config = SearchConfig(epochs=(3,), batch_size=16)
    assert family_search(config, None, 256) == (config, 0)
    found, samples = family_search(config, RuleTraining(batch_size=4, samples=512), 256)
    assert (found.batch_size, found.epochs, samples) == (4, (3,), 512)
    # 1,024 samples of 256 pairs take four epochs, whatever fewer the space offers
    found, samples = family_search(
        SearchConfig(epochs=(2, 6)), RuleTraining(batch_size=16, samples=1024), 256
    )
    assert (found.epochs, samples) == ((4, 6), 1024)
    off = SearchConfig(family_rules=False)
    assert family_search(off, RuleTraining(batch_size=4, samples=512), 256) == (off, 0)


def test_the_leader_trains_on_to_its_rule_samples_past_the_budget(
    chat: ChatSage, monkeypatch
) -> None:
    clock = _training_clock(monkeypatch)
    pairs = [TrainingPair(f"Compute {i} + 1.", str(i + 1)) for i in range(16)]
    # 30 s: the first rung (2 steps of 16 samples, 20 s) and one more step; a rule of
    # 80 samples trains the leader to 5 steps, 50 s.
    assert _one_trial_search(chat, Recipe(pairs, pairs[:4]), 30.0).samples == 48
    clock[0] = 0.0
    trial = _one_trial_search(chat, Recipe(pairs, pairs[:4]), 30.0, leader_samples=80)
    assert trial.samples == 80 and clock[0] == 50.0


def _one_trial_search(
    chat: ChatSage, recipe: Recipe, max_seconds: float, leader_samples: int = 0
) -> Trial:
    """The one trial of a search of one configuration: 6 epochs of one batch of 16."""
    from sage_agent.store.config import SearchConfig
    from sage_agent.store.search import run_search

    config = SearchConfig(epochs=(6,), n_random=1, max_trials=1, rungs=(0.25, 1.0), batch_size=16)
    (trial,), _ = run_search(
        chat,
        recipe,
        config,
        rng=random.Random(0),
        train_seed=0,
        cluster_id=1,
        max_seconds=max_seconds,
        emit=lambda _e: None,
        leader_samples=leader_samples,
    )
    return trial


def test_the_store_searches_a_rule_family_as_its_rule_says(
    store: LoRAStore, bow_embeddings, monkeypatch
) -> None:
    import dataclasses

    import sage_agent.store.store as store_module

    seen = {}

    def no_search(model, recipe, config, **options):
        seen.update(batch=config.batch_size, leader=options["leader_samples"])
        return [], []

    monkeypatch.setattr(store_module, "run_search", no_search)
    for tag, expected in (("+", (16, 0)), ("bbh:web_of_lies", (4, 512))):
        cluster = dataclasses.replace(make_cluster(bow_embeddings), tag=tag)
        with pytest.raises(StoreError, match="before the first trial"):
            store.optimize(cluster)
        assert (seen["batch"], seen["leader"]) == expected


def test_a_leader_that_ranks_worse_after_training_on_gets_its_weights_back(
    chat: ChatSage, bow_embeddings, monkeypatch
) -> None:
    from sage_agent.training.validation import TeacherForced

    _training_clock(monkeypatch)
    pairs = [TrainingPair(f"Compute {i} + 1.", str(i + 1)) for i in range(16)]
    recipe = Recipe(pairs, pairs[:4])
    seen: list[dict[str, object]] = []

    def rank(chat_model, adapter):  # the second ranking, after training on, is worse
        weights = {
            n: p.detach().clone()
            for n, p in chat_model.hf_model.named_parameters()
            if f".{adapter}." in n
        }
        seen.append(weights)
        em = 0.5 if len(seen) == 1 else 0.25
        return TeacherForced(em, 1.0, (True, False, False, False))

    monkeypatch.setattr(Recipe, "rank", lambda self, c, a: rank(c, a))
    trial = _one_trial_search(chat, recipe, 50.0)
    assert len(seen) == 2 and (trial.val_em, trial.rung) == (0.5, 0)
    now = {n: p for n, p in chat.hf_model.named_parameters() if f".{trial.name}." in n}
    assert any(not (seen[1][n] == seen[0][n]).all() for n in now)  # training on moved them
    assert all((now[n] == seen[0][n]).all() for n in now)  # and they went back


def test_expected_trial_seconds_scale_with_samples_and_layers() -> None:
    from sage_agent.training.trainer import LoRATrainConfig

    done = Trial(
        1,
        LoRATrainConfig(epochs=2, last_layers=None),
        "t",
        seconds=40.0,
        samples=200,
        validation_seconds=5.0,
        evaluations=1,
    )
    assert expected_seconds([], LoRATrainConfig(), 400, 30) == 0.0
    assert expected_seconds([done], LoRATrainConfig(), 400, 30) == 85.0
    assert expected_seconds([done], LoRATrainConfig(last_layers=15), 200, 30) == 25.0


def test_a_bracket_costs_its_first_rungs_and_the_better_halfs_promotions() -> None:
    from sage_agent.training.trainer import LoRATrainConfig

    # 0.1 s a sample and 2 s a ranking; 160 pairs x 2 epochs = 20 steps of 16.
    done = Trial(1, LoRATrainConfig(), "t", seconds=10.0, samples=100, evaluations=1)
    done.validation_seconds = 2.0
    candidate = LoRATrainConfig(epochs=2, batch_size=16)

    def cost(size: int, begun: int = 0) -> float:
        return bracket_seconds(
            [done],
            candidate,
            size=size,
            begun=begun,
            train_size=160,
            rungs=(0.25, 1.0),
            layers=30,
        )

    # A first rung is 5 steps (80 samples: 8 s + 2 s), the rest 15 steps (24 s + 2 s).
    assert cost(1) == pytest.approx(10 + 26)
    assert cost(4) == pytest.approx(4 * 10 + 2 * 26)
    assert cost(4, begun=1) == pytest.approx(3 * 10 + 2 * 26)
    assert cost(3) == pytest.approx(3 * 10 + 2 * 26)  # the better half rounds up


def test_bad_input(store: LoRAStore, chat: ChatSage, bow_embeddings, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="training needs at least 12"):
        store.optimize(make_cluster(bow_embeddings, n=8))
    with pytest.raises(StoreError, match="20 without one"):
        store.optimize(make_cluster(bow_embeddings, reference=None))
    with pytest.raises(StoreError, match="time budget must be positive"):
        store.optimize(make_cluster(bow_embeddings), max_seconds=0)
    with pytest.raises(NotFoundError, match="no adapter 'nope'"):
        store.load("nope")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions; use a file instead
            locked = tmp_path / "a-file"
            locked.write_text("")
        with pytest.raises(StoreError, match="not writable"):
            LoRAStore(tmp_path / "x.sqlite", locked / "adapters", chat, LEARNABLE)
    finally:
        os.chmod(tmp_path / "locked", 0o700)


@pytest.mark.parametrize(
    "config",
    [
        {"ranks": ()},
        {"learning_rates": (1e-3, 1e-4)},
        {"learning_rates": (0.0, 1e-3)},
        {"epochs": (0,)},
        {"dropouts": (1.0,)},
        {"n_random": 0},
        {"rungs": ()},
        {"rungs": (0.5, 0.25, 1.0)},
        {"rungs": (0.5,)},
        {"rungs": (0.0, 1.0)},
        {"validation_fraction": 1.0},
        {"min_train_samples": 2},
        {"retrain_growth": 1.0},
        {"max_seconds": float("nan")},
        {"route_threshold": 2.0},
        {"no_such_setting": 1},
        {"max_on_disk": 1},
        {"last_layers": (0,)},
        {"replay_fraction": 1.0},
        {"failure_repeats": 0},
        {"answer_format": "prose"},
        {"canary_margin": -0.1},
    ],
)
def test_bad_config(config: dict) -> None:
    with pytest.raises(ConfigError):
        StoreConfig().replace(**config)
