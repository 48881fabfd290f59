"""LoRAStore: the front of the store's parts, and ``optimize``, which runs them in order.

``optimize(cluster)`` builds the cluster's recipe (training and validation pairs), runs
the search on the one base model (trials ranked teacher-forced), and keeps the best
``keep`` whose generated answers beat the base model's and that pass the regression gate:
each is written in peft's format and registered (see ``registry``). Every trial is logged,
kept or not, with how often its teacher-forced and generated verdicts agreed."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage

from sage_agent.buffer import Cluster
from sage_agent.chat import ChatSage
from sage_agent.errors import AdapterError, EngineError, StoreError
from sage_agent.records import AdapterKept, TrainingPair
from sage_agent.store.config import StoreConfig
from sage_agent.store.gate import CanarySet
from sage_agent.store.judging import Baseline, ToReplace, Verdict, routes_all
from sage_agent.store.policy import AdaptationPolicy
from sage_agent.store.recipe import Recipe, build_recipe
from sage_agent.store.registry import AdapterRecord, AdapterRegistry, NewAdapter, TrialLog
from sage_agent.store.router import Router
from sage_agent.store.search import Emit, Trial, config_dict, family_search, run_search
from sage_agent.tasks.families import family_of_tag
from sage_agent.tasks.plans import PLAN_TAG
from sage_agent.training.adapter_files import save_adapter
from sage_agent.training.validation import judge_answers

if TYPE_CHECKING:
    from sage_agent.serving import VLLMEngine

BASE_ANSWERS_KEPT = 20_000
"""Base-model answers a store keeps (the oldest leave first): a few megabytes."""
log = logging.getLogger(__name__)


class LoRAStore:
    """The LoRA Store over the project's SQLite file ``db`` and the adapter folder ``root``.

    Its parts, each usable alone: ``registry`` (adapters on disk and the trial log),
    ``canaries`` (the regression gate's steps), ``router`` (routing and loading into
    ``model``). An adapter whose exact match on its tag's canaries falls further below
    the base model's than its gain pays for (``GateConfig``) is discarded.
    """

    def __init__(
        self,
        db: str | Path,
        root: str | Path,
        model: ChatSage,
        config: StoreConfig | None = None,
        embeddings: Embeddings | None = None,
        engine: VLLMEngine | None = None,
    ) -> None:
        self.config = config or StoreConfig()
        self.model = model
        self.engine = engine
        """A vLLM server that answers with the kept adapters (None: ``model`` does)."""
        self.registry = AdapterRegistry(db, root, self.config.registry)
        self.registry.writable()
        self.registry.sweep()
        self.canaries = CanarySet(
            db, self.config.gate, seed=self.config.seed, timeout=self.config.registry.lock_timeout
        )
        self.router = Router(self.registry, engine or model, self.config.router, embeddings)
        self.policy = AdaptationPolicy(self)
        """When a routed adapter answers: the rule a trial is evaluated by."""
        self._base_answers: dict[tuple[str, tuple[int | None, tuple[str, ...]]], AIMessage] = {}
        self._base_answers_lock = threading.Lock()

    # what the graph calls

    def route(
        self, text: str, tag: str | None = None, *, nearest: bool = False
    ) -> list[AdapterRecord]:
        return self.router.route(text, tag, nearest=nearest)

    def unsure(self, answer: AIMessage, tag: str | None = None) -> bool:
        return self.router.unsure(answer, tag)

    def surer(self, adapted: AIMessage, base: AIMessage, tag: str | None = None) -> bool:
        return self.router.surer(adapted, base, tag)

    def load(self, adapter_id: str) -> str:
        return self.router.load(adapter_id)

    def pinned(self, adapter_id: str) -> contextlib.AbstractContextManager[str]:
        return self.router.pinned(adapter_id)

    def unload(self) -> None:
        self.router.unload()

    def adapters(
        self, cluster_id: int | None = None, *, status: str | None = "ready"
    ) -> list[AdapterRecord]:
        return self.registry.adapters(cluster_id, status=status)

    def get(self, adapter_id: str) -> AdapterRecord:
        return self.registry.get(adapter_id)

    def record_use(self, adapter_id: str, *, won: bool) -> None:
        self.registry.record_use(adapter_id, won=won)

    def add_canary(
        self,
        pairs: Sequence[TrainingPair],
        tag: str | None = None,
        expressions: Sequence[str | None] | None = None,
    ) -> None:
        self.canaries.add(pairs, tag, expressions)

    def remove(self, adapter_id: str) -> None:
        """Unload an adapter and delete it from the registry, the disk and the server."""
        self.router.unload(adapter_id)
        self.registry.remove(adapter_id)
        if self.engine is not None:
            with _server_may_fail("retire", adapter_id):
                self.engine.retire(adapter_id)

    # CLO

    def optimize(
        self,
        cluster: Cluster,
        *,
        max_seconds: float | None = None,
        progress: Emit | None = None,
        tag_failures: int | None = None,
    ) -> list[AdapterRecord]:
        """Run Cluster-aware LoRA Optimisation on ``cluster``; returns the kept adapters,
        best first (empty when none beat the base model and passed the gate). The time
        budget covers the base model's evaluation, training and ranking; confirming and
        saving the kept trials come after it. ``tag_failures`` is how many of the tag's
        steps the base model has failed (``TriggerBuffer.base_failures``): with the tag's
        canaries it gives the base model's accuracy on the tag, which weighs an adapter's
        gain against its canary losses; the cluster's size when not given."""
        budget = self.config.search.max_seconds if max_seconds is None else max_seconds
        if not budget > 0:
            raise StoreError(f"time budget must be positive, not {budget}")
        started = time.perf_counter()  # the budget counts the base model's evaluation too
        emit = progress or (lambda _event: None)
        rehearse = self.config.recipe.replay_fraction > 0
        gate, rehearsal = self.canaries.split(cluster.tag, rehearse=rehearse)
        recipe = build_recipe(
            cluster,
            self.config.recipe,
            min_train_samples=self.config.min_train_samples,
            seed=self.config.seed,
            rehearsal=rehearsal,
            gate=gate,
        )
        failures = cluster.size if tag_failures is None else max(tag_failures, cluster.size)
        base = self._baseline(cluster, recipe, [pair for pair, _ in gate], failures)
        # The tag's kept adapters, the largest lift over the base model first: where a
        # retrain or a new cluster of the tag starts its search (from their weights, warm).
        # Those a killed search of this very version kept are not earlier: the search
        # it reruns starts as it did, so a resumed run trains what an unbroken one would.
        warm = self.config.search.warm_start
        earlier = sorted(
            (
                a
                for a in self.registry.adapters()
                if a.tag == cluster.tag
                and (a.cluster_id, a.cluster_version) != (cluster.id, cluster.version)
            ),
            key=lambda a: a.base_val_em - a.val_em,
        )
        search, leader_samples = family_search(
            self.config.search, family_of_tag(cluster.tag).rule, len(recipe.train)
        )
        trials, failed = run_search(
            self.model,
            recipe,
            search,
            rng=random.Random(f"{self.config.seed}:{cluster.id}:{cluster.version}"),
            train_seed=self.config.seed,
            cluster_id=cluster.id,
            max_seconds=max(0.0, budget - (time.perf_counter() - started)),
            emit=emit,
            earlier=[{**a.config, "init_from": a.path if warm else None} for a in earlier],
            leader_samples=leader_samples,
        )
        if not trials:
            raise StoreError(f"time budget of {budget:g} s was used up before the first trial")
        for failure in failed:
            self.registry.log_trial(
                TrialLog(
                    cluster_id=cluster.id,
                    cluster_version=cluster.version,
                    number=failure.number,
                    config=config_dict(failure.config),
                    val_em=0.0,
                    val_loss=None,
                    canary_em=None,
                    seconds=0.0,
                    outcome=f"failed: {failure.error}",
                    adapter_id=None,
                )
            )
        previous = self.registry.adapters(cluster.id)
        # A retrain replaces the cluster's adapters only with a lift over the base model
        # at least theirs, each measured on its own validation split: the grown cluster's
        # split differs (comparing the old adapters on it would favour them, which may
        # have trained on its older members), and a short search can do worse than the
        # one before it.
        to_replace = ToReplace(
            own_split=max((a.val_em - a.base_val_em for a in previous), default=0.0),
            this_split=self._lift_here(previous, recipe, base) if warm else 0.0,
        )
        try:
            kept = self._keep(cluster, trials, recipe, base, emit, to_replace)
        finally:
            for trial in trials:
                if trial.name in self.model.adapters:
                    self.model.delete_adapter(trial.name)
        if kept:  # the new adapters saw the cluster's current members; retire the old ones
            for old in previous:
                self.remove(old.id)
        for record in kept:  # every worker of a server answers with it from now on
            if self.engine is not None:  # (a failure here is retried on the first load)
                with _server_may_fail("register", record.id):
                    self.engine.load_adapter(record.path, record.id)
        for adapter_id in self.registry.over_limit():
            log.info("evicting adapter %s (pool limit)", adapter_id)
            self.remove(adapter_id)
        return kept

    def _baseline(
        self, cluster: Cluster, recipe: Recipe, canaries: list[TrainingPair], failures: int
    ) -> Baseline:
        """The base model on the validation pairs and on the gate's canaries, with the
        canaries routing would hand an adapter: those whose base answer is unsure (a
        planner adapter gets every question)."""
        routed: tuple[int, ...] = ()
        canary_right: tuple[bool, ...] = ()
        if canaries:
            on_canaries, canary_right = self._base_answered(recipe, canaries)
            # A planner adapter gets every question: it routes all.
            routed = tuple(
                self.policy.answered_by_adapter(cluster.tag == PLAN_TAG, on_canaries, cluster.tag)
            )
        on_validation, val_right = self._base_answered(recipe, recipe.validation)
        return Baseline(
            em=sum(val_right) / len(val_right),
            canaries=canaries,
            canary_right=canary_right,
            routed=routed,
            val_right=val_right,
            val_unsure=tuple(self.policy.answered_by_adapter(False, on_validation, cluster.tag)),
            tag_accuracy=self.canaries.tag_accuracy(cluster.tag, failures),
        )

    def _base_answered(
        self, recipe: Recipe, pairs: Sequence[TrainingPair]
    ) -> tuple[list[AIMessage], tuple[bool, ...]]:
        """The base model's generated answers to ``pairs`` and, per pair, whether the
        recipe's judge takes it. Answers are kept for the store's life, by prompt, answer
        length and stop: the base model's greedy answer to a prompt does not change, and a
        tag's canaries and a grown cluster's members come back search after search."""
        how = (recipe.max_tokens, recipe.stop)
        cache = self._base_answers
        with self._base_answers_lock:  # threads training two clusters share the cache
            missing = list(dict.fromkeys(p.prompt for p in pairs if (p.prompt, how) not in cache))
            if missing:
                answers = recipe.generate(self.model, None, missing)
                cache.update(((prompt, how), a) for prompt, a in zip(missing, answers, strict=True))
            messages = [cache[(p.prompt, how)] for p in pairs]
            for oldest in list(cache)[: max(0, len(cache) - BASE_ANSWERS_KEPT)]:
                del cache[oldest]
        return messages, judge_answers(messages, pairs, recipe.judge)

    def _keep(
        self,
        cluster: Cluster,
        trials: list[Trial],
        recipe: Recipe,
        base: Baseline,
        emit: Emit,
        to_replace: ToReplace,
    ) -> list[AdapterRecord]:
        """Register the best trials that beat the base model (by at least the lift of
        the adapters they would replace, ``to_replace``) and pass the gate, in their
        ranked order until ``keep`` are kept; log every trial."""
        kept: list[AdapterRecord] = []
        keep = self.config.search.keep
        for trial in trials:  # best first
            if len(kept) == keep:
                verdict = Verdict(f"ranked below the {keep} kept", trial.val_em, trial.exact)
            else:
                verdict = self._judge(trial, recipe, base, to_replace.lift(trial.config))
            record = None
            if verdict.outcome == "kept":
                record = self._register(cluster, trial, recipe, base, verdict, len(kept) + 1)
                kept.append(record)
                emit(
                    AdapterKept(
                        event="adapter_kept",
                        cluster_id=cluster.id,
                        adapter=record.id,
                        val_em=verdict.em,
                    )
                )
            else:
                log.info(
                    "cluster %s, trial %s discarded: %s", cluster.id, trial.number, verdict.outcome
                )
            self.registry.log_trial(
                TrialLog(
                    cluster_id=cluster.id,
                    cluster_version=cluster.version,
                    number=trial.number,
                    config=config_dict(trial.config),
                    val_em=trial.val_em,
                    val_loss=trial.val_loss,
                    canary_em=verdict.canary_em,
                    rung=trial.rung,
                    generated_em=verdict.generated_em,
                    agreement=verdict.agreement,
                    seconds=trial.seconds,
                    curve=list(trial.curve),
                    outcome=verdict.outcome,
                    adapter_id=record.id if record is not None else None,
                )
            )
        return kept

    def _judge(self, trial: Trial, recipe: Recipe, base: Baseline, replaced_lift: float) -> Verdict:
        """Whether a trial is kept: it beats the base model (by ``replaced_lift`` at least)
        and passes the canary gate.

        A trial's teacher-forced exact match is a lower bound of its generated one (an
        answer right teacher-forced is what greedy decoding writes; one cut short or
        followed by more text can still be read right when generated), so a trial whose
        bound already beats the base model is kept on it; generation runs only for a
        trial the bound does not decide (or for every trial with ``confirm_all``). The gate
        reads the canaries teacher-forced first, the same lower bound, and generates only
        when that bound fails."""
        right, em = trial.exact, trial.val_em
        generated = agreement = None
        if em <= base.em or em - base.em < replaced_lift or self.config.search.confirm_all:
            right = recipe.answers_right(self.model, trial.name, recipe.validation)
            em = generated = sum(right) / len(right)
            agreement = sum(a == b for a, b in zip(trial.exact, right, strict=True)) / len(right)
        judged = Verdict("kept", em, right, generated_em=generated, agreement=agreement)
        if em <= base.em:
            why = f"generated validation EM {em:.3f} does not beat the base {base.em:.3f}"
            return replace(judged, outcome=why)
        if em - base.em < replaced_lift:
            why = (
                f"its lift of {em - base.em:.3f} over the base is below the "
                f"{replaced_lift:.3f} of the adapters it would replace"
            )
            return replace(judged, outcome=why)
        if base.canary_em is None:
            return judged
        margin = self.canaries.margin(base.tag_accuracy, em - base.em)
        canary_em = self._canary_em(trial, recipe, base, base.canary_em - margin)
        judged = replace(judged, canary_em=canary_em)
        if canary_em < base.canary_em - margin:
            why = (
                f"canary EM {canary_em:.3f} is below the base {base.canary_em:.3f} by more "
                f"than {margin:.3f}"
            )
            return replace(judged, outcome=why)
        return judged

    def _register(
        self,
        cluster: Cluster,
        trial: Trial,
        recipe: Recipe,
        base: Baseline,
        verdict: Verdict,
        position: int,
    ) -> AdapterRecord:
        """Save a kept trial in peft's format and register it, with how it routes."""
        route_all = routes_all(
            self.model, cluster.tag, trial.name, recipe, base, verdict.right, verdict.canary_em
        )
        return self.registry.register(
            NewAdapter(
                cluster_id=cluster.id,
                cluster_version=cluster.version,
                tag=cluster.tag,
                position=position,
                config=config_dict(trial.config),
                val_em=verdict.em,
                val_loss=trial.val_loss,
                base_val_em=base.em,
                canary_em=verdict.canary_em,
                train_seconds=trial.seconds,
                samples=len(recipe.train),
                route_all=route_all,
                centroid=cluster.centroid,
            ),
            lambda folder: save_adapter(self.model, trial.name, folder),
        )

    def _lift_here(
        self, previous: Sequence[AdapterRecord], recipe: Recipe, base: Baseline
    ) -> float:
        """The largest teacher-forced lift over the base model of the ``previous``
        adapters on this search's validation pairs (0 with none, or where one is gone)."""
        lifts = [0.0]
        for old in previous:
            with contextlib.suppress(AdapterError), self.router.pinned(old.id) as name:
                lifts.append(recipe.rank(self.model, name).exact_match - base.em)
        return max(lifts)

    def _canary_em(self, trial: Trial, recipe: Recipe, base: Baseline, floor: float) -> float:
        """The trial's canary exact match as routing would use it: the adapter answers
        only the canaries whose base answer is unsure. Read teacher-forced first (a lower
        bound); generated only when that bound is below ``floor``."""
        bound = base.canary_em_as_routed(recipe.gate_forced(self.model, trial.name, base.routed))
        if bound >= floor or not base.routed:
            return bound
        routed = [base.canaries[i] for i in base.routed]
        return base.canary_em_as_routed(recipe.answers_right(self.model, trial.name, routed))


@contextlib.contextmanager
def _server_may_fail(what: str, adapter_id: str) -> Iterator[None]:
    """A server that is down or refuses must not undo the store's own bookkeeping."""
    try:
        yield
    except (AdapterError, EngineError) as error:
        log.warning("could not %s adapter %s on the server: %s", what, adapter_id, error)
