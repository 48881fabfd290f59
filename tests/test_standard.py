"""LangChain's standard chat model tests: unit tests (no weights), integration tests on the
embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from sage_agent import ChatSage


class TestChatSageUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSage]:
        return ChatSage

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Construction loads nothing, so any model id will do here.
        return {"model": "unit-test/never-loaded", "temperature": 0}

    @property
    def supports_model_override(self) -> bool:
        return False


@cache
def _embedded_weights() -> tuple[Any, Any]:
    model = ChatSage()
    return model.hf_model, model.tokenizer


class _SharedWeightsChatSage(ChatSage):
    """The suite builds a new model per test; all of them share one load of the weights."""

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = _embedded_weights()


@pytest.mark.embedded
class TestChatSageIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSage]:
        return _SharedWeightsChatSage

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 24}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def has_tool_calling(self) -> bool:
        return False  # declared unsupported: see ChatSage's docstring and the README
