"""Routing: which registered adapters answer a step, whether the base model's own answer
is sure enough to keep, and the adapters loaded where answers come from (an
``AdapterHost``: the in-process ChatSage, or a vLLM server's ``VLLMEngine``; least
recently used leave first).

Threads share a router: loading and unloading hold its lock, and an adapter in use
(``pinned``) is never unloaded under a thread that answers with it; an unload asked
meanwhile happens when its last user is done."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage

from sage_agent.embeddings import LazyDefaultEmbeddings
from sage_agent.errors import CorruptAdapter
from sage_agent.scoring.numeric import span_logprob
from sage_agent.store.config import RouterConfig
from sage_agent.store.registry import AdapterRecord, AdapterRegistry
from sage_agent.tasks.families import ARITHMETIC, family_of_tag
from sage_agent.tasks.steps import operators_within


class AdapterHost(Protocol):
    """Where routed adapters answer from: ChatSage, or a VLLMEngine."""

    @property
    def adapters(self) -> dict[str, str | None]: ...

    def load_adapter(self, path: str | Path, name: str) -> None: ...

    def delete_adapter(self, name: str) -> None: ...


class Router:
    """Routes texts to the registry's adapters and loads them into ``host``."""

    def __init__(
        self,
        registry: AdapterRegistry,
        host: AdapterHost,
        config: RouterConfig | None = None,
        embeddings: Embeddings | None = None,
    ) -> None:
        self.registry, self.host = registry, host
        self.config = config or RouterConfig()
        self.embeddings: Embeddings = embeddings or LazyDefaultEmbeddings()
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.RLock()
        self._pins: Counter[str] = Counter()
        self._doomed: set[str] = set()
        """Adapters asked to unload while pinned: unloaded when their pins reach 0."""

    def route(
        self, text: str, tag: str | None = None, *, nearest: bool = False
    ) -> list[AdapterRecord]:
        """The adapters of the cluster whose centroid is nearest to ``text`` (cosine at least
        ``route_threshold``, or any with ``nearest``; same tag when one is given, else one
        of its operators' with ``route_by_operators``; a one-step family's tag routes to
        its nearest with ``route_whole_families``), best first; [] when none is."""
        if tag is not None and self.config.route_whole_families:
            nearest = nearest or not family_of_tag(tag).multi_step
        centroids = self.registry.centroids(tag)
        if not centroids and tag is not None and self.config.route_by_operators:
            parts = [part for part in self.registry.tags() if operators_within(part, tag)]
            centroids = [c for part in parts for c in self.registry.centroids(part)]
        if not centroids:
            return []
        vector = np.asarray(self.embeddings.embed_query(text), dtype=np.float64)
        vector /= np.linalg.norm(vector) or 1.0
        best, best_cosine = None, -np.inf if nearest else self.config.route_threshold
        for cluster_id, centroid in centroids:
            centroid = centroid.astype(np.float64)
            cosine = float(vector @ centroid / (np.linalg.norm(centroid) or 1.0))
            if cosine >= best_cosine:
                best, best_cosine = cluster_id, cosine
        return [] if best is None else self.registry.adapters(best)

    def unsure(self, answer: AIMessage, tag: str | None = None) -> bool:
        """Whether a base-model answer to a step of ``tag`` should go to a routed adapter
        (``route_below``): the log-probability of what it says (its number; a label,
        letter or line for the tag's family: ``TaskFamily.answer_span``) is below the
        threshold, or it says nothing in its family's form."""
        if self.config.route_below is None:
            return True
        confidence = self.confidence(answer, tag)
        return confidence is None or confidence < self.config.route_below

    def confidence(self, answer: AIMessage, tag: str | None = None) -> float | None:
        """The log-probability of what an answer to a step of ``tag`` says (its number; a
        label, letter or line for the tag's family: ``TaskFamily.answer_span``); None when
        it reports no log-probabilities or says nothing in its family's form."""
        tokens = answer.response_metadata.get("logprobs", {}).get("content")
        if not tokens:
            return None
        family = family_of_tag(tag) if tag is not None else ARITHMETIC
        return span_logprob(tokens, family.answer_span)

    def surer(self, adapted: AIMessage, base: AIMessage, tag: str | None = None) -> bool:
        """Whether the model is surer of what the adapter's answer says than of what the
        base model's says (``contest``); an answer that says nothing loses."""
        theirs, ours = self.confidence(adapted, tag), self.confidence(base, tag)
        return theirs is not None and (ours is None or theirs > ours)

    def load(self, adapter_id: str) -> str:
        """Load a registered adapter into the host (verifying its checksum) and
        return the name it is loaded under; keeps at most ``max_loaded`` in memory (more
        while more are pinned)."""
        record = self.registry.get(adapter_id)
        if record.status != "ready":
            raise CorruptAdapter(f"adapter {adapter_id} is {record.status}; it is not loaded")
        with self._lock:
            self._doomed.discard(adapter_id)
            if adapter_id in self._loaded and adapter_id not in self.host.adapters:
                # The host is shared; its owner may have deleted the adapter directly.
                del self._loaded[adapter_id]
            if adapter_id in self._loaded:
                self._loaded.move_to_end(adapter_id)
                return adapter_id
            if not self.registry.intact(record):
                self.registry.mark_broken(adapter_id)
                raise CorruptAdapter(
                    f"adapter {adapter_id} at {record.path} does not match its checksum "
                    "(missing or changed files); marked broken and not loaded"
                )
            self.host.load_adapter(record.path, adapter_id)
            self._loaded[adapter_id] = None
            evictable = [a for a in self._loaded if not self._pins[a] and a != adapter_id]
            for oldest in evictable[: max(0, len(self._loaded) - self.config.max_loaded)]:
                self._unload_now(oldest)  # the least recently used first
            return adapter_id

    @contextlib.contextmanager
    def pinned(self, adapter_id: str) -> Iterator[str]:
        """Load the adapter and keep it loaded while the block answers with it."""
        with self._lock:
            name = self.load(adapter_id)
            self._pins[adapter_id] += 1
        try:
            yield name
        finally:
            with self._lock:
                self._pins[adapter_id] -= 1
                if not self._pins[adapter_id]:
                    del self._pins[adapter_id]
                    if adapter_id in self._doomed:
                        self._unload_now(adapter_id)

    def unload(self, adapter_id: str | None = None) -> None:
        """Free one loaded adapter, or (None) every adapter this router loaded; if one was
        active, the base model answers. A pinned one is freed when its users are done.
        They load again on the next ``load``."""
        with self._lock:
            for loaded in [adapter_id] if adapter_id is not None else list(self._loaded):
                if self._pins[loaded]:
                    self._doomed.add(loaded)
                else:
                    self._unload_now(loaded)

    def _unload_now(self, adapter_id: str) -> None:
        self._doomed.discard(adapter_id)
        if adapter_id not in self._loaded:
            return
        # ChatSage.delete_adapter falls back to the base model if this one was active.
        if adapter_id in self.host.adapters:
            self.host.delete_adapter(adapter_id)
        del self._loaded[adapter_id]
