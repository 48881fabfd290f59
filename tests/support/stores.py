"""A store that routes every prompt to one adapter, for the policy's unit tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeStore:
    """Routes every prompt to adapter ``a1``; says every base answer is (un)sure."""

    def __init__(
        self, *, route_all: bool = False, unsure: bool = True, route_below: float | None = -1.0
    ) -> None:
        self.route_all, self._unsure = route_all, unsure
        self.config = SimpleNamespace(router=SimpleNamespace(route_below=route_below))
        self.uses: list[tuple[str, bool]] = []
        self.canaries: list[tuple[Any, ...]] = []
        self.loaded: list[str] = []

    def route(
        self, text: str, tag: str | None = None, *, nearest: bool = False
    ) -> list[SimpleNamespace]:
        return [SimpleNamespace(id="a1", route_all=self.route_all)]

    def unsure(self, _answer: Any) -> bool:
        return self._unsure if self.config.router.route_below is not None else True

    def load(self, adapter_id: str) -> str:
        self.loaded.append(adapter_id)
        return adapter_id

    def record_use(self, adapter_id: str, *, won: bool) -> None:
        self.uses.append((adapter_id, won))

    def add_canary(self, pairs: Any, tag: str | None = None, expressions: Any = None) -> None:
        self.canaries.append((pairs, tag, expressions))
