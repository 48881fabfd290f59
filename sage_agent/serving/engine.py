"""VLLMEngine: steps answered by a vLLM server, adapters registered with it at run time.

The answering model is langchain-openai's ``ChatOpenAI`` pointed at the server's
OpenAI-compatible API. vLLM serves each LoRA adapter under a model name of its own, so
an adapter is chosen per call by that name, and threads that share the engine never see
each other's choice. The Trigger's margins come from the answer's ``top_logprobs``
(``scoring.numeric.mean_margin``). Adapters are registered with
``POST /v1/load_lora_adapter`` (the server needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``),
from a folder the server reads at the same path as the store writes it.

Training stays in the process that trains, on a ChatSage of the same base weights.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import openai
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI

from sage_agent.errors import AdapterError, EngineError, NotFoundError
from sage_agent.scoring.numeric import logprob_margins

TOP_LOGPROBS = 2
"""Alternatives asked per token: two give the top-1 minus top-2 margin the Trigger reads."""


class VLLMEngine:
    """A vLLM server (``sage-agent serve``, or ``vllm serve --enable-lora``) at ``url``.

    ``model`` is the base model's name on the server (default: the one model it serves
    that is not an adapter). ``invoke(prompt, adapter=..., max_tokens=...)`` answers the
    way ChatSage does, with the same ``response_metadata`` keys; ``chat_model`` is the
    ChatOpenAI behind it, for a ``create_agent`` agent. ``load_adapter`` /
    ``delete_adapter`` / ``adapters`` are what the store's router calls on ChatSage.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str = "EMPTY",
        timeout: float = 300.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        url = url.rstrip("/")
        self.url = url.removesuffix("/v1")
        self.timeout = timeout
        self._model = model
        self._api_key = api_key
        self._http = http_client or httpx.Client(timeout=timeout)
        self._registered: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLLMEngine({self.url!r})"

    # the answering model

    @cached_property
    def model_name(self) -> str:
        """The base model's name on the server."""
        if self._model is not None:
            return self._model
        bases = [m["id"] for m in self.served() if not m.get("parent")]
        if len(bases) != 1:
            raise EngineError(
                f"{self.url} serves {len(bases)} base models ({bases}); name one with model="
            )
        return bases[0]

    @cached_property
    def chat_model(self) -> ChatOpenAI:
        """The ChatOpenAI that answers: greedy, with two alternatives per token."""
        return ChatOpenAI(
            base_url=f"{self.url}/v1",
            api_key=self._api_key,
            model=self.model_name,
            temperature=0.0,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
            timeout=self.timeout,
            max_retries=2,
            http_client=self._http,
        )

    def call_settings(self, adapter: str | None) -> dict[str, Any]:
        """The call settings that answer with ``adapter`` (None: the base model): its
        model name on the server."""
        return {"model": adapter or self.model_name}

    def invoke(
        self,
        prompt: LanguageModelInput,
        *,
        adapter: str | None = None,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
    ) -> AIMessage:
        """Answer ``prompt`` with ``adapter`` (None: the base model), as ChatSage does:
        ``response_metadata`` carries ``logprobs``, ``logits_margin`` (per token),
        ``logits_margin_mean`` and ``adapter``."""
        settings = self.call_settings(adapter)
        if max_tokens is not None:
            settings["max_tokens"] = max_tokens
        try:
            message = self._ask(prompt, stop, settings)
        except NotFoundError:
            folder = self._registered.get(adapter) if adapter is not None else None
            if folder is None:
                raise
            # Registered here, unknown there: the server restarted. Register it again.
            self.load_adapter(folder, str(adapter))
            message = self._ask(prompt, stop, settings)
        tokens = _answer_tokens(message)
        margins = logprob_margins(tokens)
        message.response_metadata.update(
            logprobs={"content": tokens},
            logits_margin=margins,
            logits_margin_mean=sum(margins) / len(margins) if margins else None,
            adapter=adapter,
        )
        return message

    def _ask(
        self, prompt: LanguageModelInput, stop: list[str] | None, settings: dict[str, Any]
    ) -> AIMessage:
        try:
            message = self.chat_model.invoke(prompt, stop=stop, **settings)
        except openai.NotFoundError as error:
            raise NotFoundError(
                f"{self.url} serves no model named {settings['model']!r}: {_said(error)}"
            ) from error
        except (openai.APIConnectionError, openai.APIStatusError) as error:
            raise EngineError(f"{self.url} did not answer: {_said(error)}") from error
        assert isinstance(message, AIMessage)  # ChatOpenAI answers with one
        return message

    # adapters: the router's protocol, as on ChatSage

    @property
    def adapters(self) -> dict[str, str | None]:
        """Adapters this process registered with the server: name -> folder."""
        return dict(self._registered)

    def load_adapter(self, path: str | Path, name: str) -> None:
        """Register the peft adapter in ``path`` with the server under ``name``. One
        registered already (by another worker of the same store) counts as registered."""
        folder = Path(path).absolute()
        body = {"lora_name": name, "lora_path": str(folder)}
        response = self._post("/v1/load_lora_adapter", body)
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise AdapterError(
                f"{self.url} refused the adapter {name!r} at {folder}: {_text(response)}"
            )
        with self._lock:
            self._registered[name] = str(folder)

    def delete_adapter(self, name: str) -> None:
        """Forget ``name`` here; the server keeps it registered, for the other workers
        that may answer with it (vLLM keeps only ``--max-loras`` adapters' weights in
        use and pages the others itself). ``retire`` removes it from the server."""
        with self._lock:
            self._registered.pop(name, None)

    def retire(self, name: str) -> None:
        """Remove ``name`` from the server (an adapter the store deleted)."""
        response = self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code not in (200, 404) and "not found" not in response.text.lower():
            raise AdapterError(f"{self.url} did not retire the adapter {name!r}: {_text(response)}")
        self.delete_adapter(name)

    # the server

    def served(self) -> list[dict[str, Any]]:
        """The server's models (``GET /v1/models``): the base and each adapter (whose
        ``parent`` is the base)."""
        try:
            response = self._http.get(f"{self.url}/v1/models", headers=self._headers())
        except httpx.HTTPError as error:
            raise EngineError(f"no vLLM server answers at {self.url}: {error}") from error
        if response.status_code != 200:
            raise EngineError(f"{self.url}/v1/models answered {_text(response)}")
        return list(response.json().get("data") or [])

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.post(f"{self.url}{path}", json=body, headers=self._headers())
        except httpx.HTTPError as error:
            raise EngineError(f"no vLLM server answers at {self.url}: {error}") from error

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}


def _answer_tokens(message: AIMessage) -> list[dict[str, Any]]:
    """The logprobs entries of the answer's text: vLLM also reports the end-of-turn token
    (``<|im_end|>``), which the text leaves out and ChatSage does not report."""
    tokens = (message.response_metadata.get("logprobs") or {}).get("content") or []
    kept, length = [], 0
    for token in tokens:
        if length >= len(message.text):
            break
        kept.append(token)
        length += len(token["token"])
    return kept


def _text(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text.strip()[:300]}"


def _said(error: Exception) -> str:
    return str(getattr(error, "message", None) or error)[:300]
