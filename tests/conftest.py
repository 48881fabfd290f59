"""Shared fixtures: a tiny llama made here (no download), and the embedded models loaded
once per session."""

from __future__ import annotations

import os

# Tests never reach a model hub: an unknown id must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings

from tests.support.tiny import BagOfWordsEmbeddings, build_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_chat(tiny_model_dir: Path):
    from sage_agent import ChatSage

    return ChatSage(model=str(tiny_model_dir), max_tokens=12)


@pytest.fixture
def bow_embeddings() -> Embeddings:
    return BagOfWordsEmbeddings()


@pytest.fixture(scope="session")
def embedded_chat():
    """The embedded SmolLM2-135M-Instruct, loaded once for the session."""
    from sage_agent import ChatSage

    model = ChatSage(max_tokens=24)
    model.hf_model  # noqa: B018 - load now, once
    return model


@pytest.fixture(scope="session")
def embedded_embeddings():
    from sage_agent import default_embeddings

    return default_embeddings()
