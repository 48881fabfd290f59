"""The SAGE graph for ``langgraph dev`` / LangGraph Studio (langgraph.json points here).

Studio and the HTTP API send the context as JSON; ``StudioContext`` is that JSON's
schema, and it resolves to a SageContext on the named database. A client names a
database, never a place: ``db`` is a relative path resolved under the operator's root
(``SAGE_STUDIO_ROOT``, by default the server's working directory), and one that leaves it
(an absolute path, ``..``, a symlink out) is refused before anything is created. ``model``
is the embedded model or one the operator allows (``SAGE_STUDIO_MODELS``, comma-separated
ids or paths). Every context of one model shares that model; the contexts themselves are
kept for the ``SAGE_STUDIO_MAX_DATABASES`` (8) databases used last. ``SAGE_STUDIO_ENGINE``
(a vLLM server's URL) makes every context answer through that server; a client cannot
name a server, so the graph never calls an address a client chose.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sage_agent.chat import ChatSage
from sage_agent.context import SageContext, build_context
from sage_agent.database import adapter_root
from sage_agent.errors import ContextError
from sage_agent.graphs.sage import build_sage_graph

MAX_DATABASES = int(os.environ.get("SAGE_STUDIO_MAX_DATABASES", "8"))


def studio_root() -> Path:
    """The folder every client's database lies under."""
    return Path(os.environ.get("SAGE_STUDIO_ROOT") or os.getcwd()).resolve()


def allowed_models() -> set[str]:
    names = os.environ.get("SAGE_STUDIO_MODELS", "")
    return {name.strip() for name in names.split(",") if name.strip()}


class StudioContext(BaseModel):
    """The context as JSON: {"db": "sage.db", "model": null}. ``db`` is required and
    nothing else is accepted, so a missing or mistyped context is refused, never
    replaced by a default database."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: str = Field(min_length=1, max_length=200)
    """The project's SQLite file, a relative path under the server's root."""
    model: str | None = None
    """None: the embedded SmolLM2-135M; else one of the operator's SAGE_STUDIO_MODELS."""

    @field_validator("db")
    @classmethod
    def _relative(cls, db: str) -> str:
        # No file system here: the server validates on its event loop, where a blocking
        # call is an error. Symlinks are followed in resolve(), on a worker thread.
        path = Path(db)
        if path.is_absolute() or ".." in path.parts or "\x00" in db:
            raise ValueError(f"db must be a relative path inside the server's root, not {db!r}")
        return db

    @field_validator("model")
    @classmethod
    def _allowed(cls, model: str | None) -> str | None:
        if model is not None and model not in allowed_models():
            raise ValueError(
                f"model {model!r} is not one this server allows (SAGE_STUDIO_MODELS); "
                "leave it out for the embedded model"
            )
        return model

    def resolve(self) -> SageContext:
        """The context on ``db`` under the root; ContextError if a symlink leads out."""
        return _context(studio_root(), self.db, self.model)


@functools.lru_cache(maxsize=MAX_DATABASES)
def _context(root: Path, db: str, model: str | None) -> SageContext:
    """Built once per database and model (every node of a run resolves its context), after
    checking that neither the database nor its adapter folder leads out of the root."""
    path = root / db
    for target in (path, adapter_root(path)):
        if not target.resolve().is_relative_to(root):
            raise ContextError(f"db {db!r} leads outside the server's root (a symlink)")
    return build_context(
        str(path), _model(model), engine=os.environ.get("SAGE_STUDIO_ENGINE") or None
    )


@functools.cache
def _model(model: str | None) -> ChatSage:
    """One chat model per allowed name, shared by every database's context."""
    return ChatSage(model=model) if model else ChatSage()


graph = build_sage_graph(context_schema=StudioContext).compile()
"""Compiled without a checkpointer: the server brings its own."""
