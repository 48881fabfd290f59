"""The SAGE graph for ``langgraph dev`` / LangGraph Studio (langgraph.json points here).

Studio and the HTTP API send the context as JSON; ``StudioContext`` is that JSON's
schema, and it resolves to a SageContext on the named database (built once per database
and model, then shared by every run of the server).
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from sage_agent.graphs.sage import build_sage_graph

from sage_agent.context import SageContext, build_context


class StudioContext(BaseModel):
    """The context as JSON: {"db": "sage.db", "model": null}. ``db`` is required and
    nothing else is accepted, so a missing or mistyped context is refused, never
    replaced by a default database."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: str = Field(min_length=1)
    """The project's SQLite file, relative to the server's working directory."""
    model: str | None = None
    """A local folder, .gguf file or cached hub id; None: the embedded SmolLM2-135M."""

    def resolve(self) -> SageContext:
        return _context(str(Path(self.db).absolute()), self.model)


@functools.cache
def _context(db: str, model: str | None) -> SageContext:
    return build_context(db, model)


graph = build_sage_graph(context_schema=StudioContext).compile()
"""Compiled without a checkpointer: the server brings its own."""
