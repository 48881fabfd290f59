"""Stores for the tests: a fake that routes every prompt to one adapter (the policy's unit
tests), and a real store's settings and cluster that the tiny llama learns in seconds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np

from sage_agent.buffer import Cluster, Sample
from sage_agent.store import StoreConfig


class FakeStore:
    """Routes every prompt to adapter ``a1``; says every base answer is (un)sure, and, with
    ``contest``, whether the adapter's answer is ``surer``."""

    def __init__(
        self,
        *,
        route_all: bool = False,
        unsure: bool = True,
        route_below: float | None = -1.0,
        contest: bool = False,
        surer: bool = True,
    ) -> None:
        self.route_all, self._unsure, self._surer = route_all, unsure, surer
        self.config = SimpleNamespace(
            router=SimpleNamespace(route_below=route_below, contest=contest)
        )
        self.uses: list[tuple[str, bool]] = []
        self.canaries: list[tuple[Any, ...]] = []
        self.loaded: list[str] = []

    def route(
        self, text: str, tag: str | None = None, *, nearest: bool = False
    ) -> list[SimpleNamespace]:
        return [SimpleNamespace(id="a1", route_all=self.route_all)]

    def unsure(self, _answer: Any, _tag: str | None = None) -> bool:
        return self._unsure if self.config.router.route_below is not None else True

    def surer(self, _adapted: Any, _base: Any, _tag: str | None = None) -> bool:
        return self._surer

    def load(self, adapter_id: str) -> str:
        self.loaded.append(adapter_id)
        return adapter_id

    @contextlib.contextmanager
    def pinned(self, adapter_id: str) -> Iterator[str]:
        yield self.load(adapter_id)

    def record_use(self, adapter_id: str, *, won: bool) -> None:
        self.uses.append((adapter_id, won))

    def add_canary(self, pairs: Any, tag: str | None = None, expressions: Any = None) -> None:
        self.canaries.append((pairs, tag, expressions))


# A task the tiny random model can learn in seconds: every answer is "9". (Untrained, its
# babble ends in "7% pens" whatever the prompt, so "7" would count as right already.)
LEARNABLE = StoreConfig().replace(
    learning_rates=(5e-3, 2e-2),
    epochs=(6,),
    ranks=(4, 8),
    last_layers=(None,),
    max_trials=5,
    n_random=3,
    top_k=1,
    rungs=(0.25, 1.0),
    dropouts=(0.0, 0.05),
    # These rates are tuned to 15 pairs an epoch; twice the pairs overshoots on this model.
    failure_repeats=1,
)


def make_cluster(
    embeddings,
    cluster_id: int = 1,
    words: str = "apples",
    n: int = 20,
    version: int = 1,
    reference: str | None = "9",
) -> Cluster:
    samples = [
        Sample(
            cluster_id * 1000 + i,
            f"Compute {i}+{9 - i}. {words}",
            "+",
            {"reference": reference} if reference is not None else {},
        )
        for i in range(n)
    ]
    centroid = np.mean(embeddings.embed_documents([s.text for s in samples]), axis=0)
    return Cluster(
        cluster_id,
        "+",
        n,
        centroid / np.linalg.norm(centroid),
        frozenset(),
        version,
        None,
        None,
        samples,
    )
