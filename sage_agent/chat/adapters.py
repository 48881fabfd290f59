"""Adapter slots of ChatSage: peft LoRA adapters on the one base model, through
transformers' PEFT integration, so switching adapters never copies or re-wraps it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sage_agent.chat.loading import quiet_peft
from sage_agent.errors import AdapterError, NotFoundError


class AdapterSlots:
    """ChatSage's adapter methods. A mixin: ChatSage holds the state in its private
    attributes ``_model``, ``_adapters`` (name -> folder), ``_active_adapter`` and
    ``_lock``, and loads the model in ``_ensure_loaded``."""

    def call_settings(self, adapter: str | None) -> dict[str, Any]:
        """The call settings that answer with ``adapter`` (None: the base model), for
        ``bind(**settings)`` or a middleware's ``model_settings``."""
        return {"adapter": adapter}

    @property
    def active_adapter(self) -> str | None:
        """The adapter in use, or None for the base model."""
        return self._active_adapter

    @property
    def adapters(self) -> dict[str, str | None]:
        """Loaded adapters: name -> the folder each was loaded from (None: made in memory)."""
        return dict(self._adapters)

    def add_adapter(self, name: str, config: Any) -> None:
        """Add a fresh adapter (a peft ``LoraConfig``) to the base model, e.g. to train it;
        it is not activated."""
        if name in self._adapters:
            raise AdapterError(f"an adapter named {name!r} is already loaded")
        self._ensure_loaded()
        with self._lock, quiet_peft():
            self._model.add_adapter(config, adapter_name=name)
            self._adapters[name] = None
            # add_adapter activates the new adapter in transformers; keep the previous choice.
            self._apply(self._active_adapter)

    def load_adapter(self, path: str | Path, name: str) -> None:
        """Load a peft LoRA adapter from ``path`` under ``name``; it is not activated."""
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise AdapterError(f"no peft adapter at {folder} (adapter_config.json missing)")
        if name in self._adapters:
            raise AdapterError(f"an adapter named {name!r} is already loaded")
        self._ensure_loaded()
        with self._lock, quiet_peft():
            try:
                info = self._model.load_adapter(str(folder), adapter_name=name)
                # transformers lists every loaded adapter's keys the file lacks, the other
                # adapters' included; only this adapter's own missing weights are an error.
                missing = sorted(k for k in getattr(info, "missing_keys", ()) if f".{name}." in k)
                if missing:
                    raise ValueError(f"{len(missing)} weights missing, e.g. {missing[0]}")
            except Exception as error:
                with contextlib.suppress(Exception):
                    self._model.delete_adapter(name)
                raise AdapterError(f"cannot load the adapter at {folder}: {error}") from error
            self._adapters[name] = str(folder)
            # Loading activates the new adapter in transformers; keep the previous choice.
            self._apply(self._active_adapter)

    def set_adapter(self, name: str | None) -> None:
        """Answer with adapter ``name`` from now on, or with the base model for None."""
        if name is not None and name not in self._adapters:
            raise NotFoundError(
                f"no adapter named {name!r} is loaded; loaded: {sorted(self._adapters)}"
            )
        with self._lock:
            self._switch(name)

    def delete_adapter(self, name: str) -> None:
        """Unload adapter ``name`` and free its weights; the base model answers if it was active."""
        if name not in self._adapters:
            raise NotFoundError(
                f"no adapter named {name!r} is loaded; loaded: {sorted(self._adapters)}"
            )
        with self._lock, quiet_peft():
            self._model.delete_adapter(name)
            del self._adapters[name]
            self._apply(None if self._active_adapter == name else self._active_adapter)

    @contextlib.contextmanager
    def using_adapter(self, name: str | None) -> Iterator[Any]:
        """``with model.using_adapter("a"):`` answers with "a", then restores the previous one.

        The active adapter belongs to the model, not to a thread. Threads that share one
        ChatSage answer with a per-call adapter instead (``invoke(..., adapter="a")``,
        ``bind(adapter="a")``), or hold ``lock`` around this block.
        """
        previous = self._active_adapter
        self.set_adapter(name)
        try:
            yield self
        finally:
            with self._lock:
                self._switch(previous if previous in self._adapters else None)

    @contextlib.contextmanager
    def _answering_with(self, name: str | None) -> Iterator[None]:
        """Switch to adapter ``name`` for one generation, then back; the caller holds the
        lock, so no other thread sees the switch (a per-call ``adapter=``)."""
        previous = self._active_adapter
        if name == previous:
            yield
            return
        self._apply(name)
        try:
            yield
        finally:
            self._apply(previous if previous in self._adapters else None)

    def _switch(self, name: str | None) -> None:
        """``_apply`` unless ``name`` is already active: setting an adapter walks every
        module of the model (~0.1 s on the embedded one), and a routed step asks for its
        adapter around each answer."""
        if name != self._active_adapter:
            self._apply(name)

    def _apply(self, name: str | None) -> None:
        """Make ``name`` the model's adapter (None: the base model), whatever peft's state
        (adding or loading an adapter activates it there)."""
        if name is None:
            if self._adapters:
                self._model.disable_adapters()
        else:
            self._model.set_adapter(name)
            self._model.enable_adapters()
        self._active_adapter = name
