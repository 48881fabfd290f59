"""A stand-in for vLLM's OpenAI-compatible API inside httpx (a MockTransport), for unit
tests of the engine: models, runtime LoRA loading and chat completions with logprobs.
The real server is tested in tests/test_vllm.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from sage_agent.serving import VLLMEngine

BASE = "tiny-base"


def _tokens(text: str, logprob: float, runner_up: float) -> list[dict]:
    """One entry per character, each with its best and second-best alternative."""
    return [
        {
            "token": char,
            "logprob": logprob,
            "bytes": list(char.encode()),
            "top_logprobs": [
                {"token": char, "logprob": logprob, "bytes": list(char.encode())},
                {"token": "?", "logprob": runner_up, "bytes": [63]},
            ],
        }
        for char in text
    ]


class Overlapping:
    """An answer that takes a while, always ``text``; ``most`` is how many overlapped."""

    def __init__(self, text: str, seconds: float = 0.05) -> None:
        self.text, self.seconds = text, seconds
        self.most = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, model: str, prompt: str) -> str:
        with self._lock:
            self._in_flight += 1
            self.most = max(self.most, self._in_flight)
        time.sleep(self.seconds)
        with self._lock:
            self._in_flight -= 1
        return self.text


class FakeVLLM:
    """Answers ``answer(model, prompt)``; records every chat request's model name."""

    def __init__(self, answer: Callable[[str, str], str]) -> None:
        self.answer = answer
        self.adapters: dict[str, str] = {}
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def engine(self) -> VLLMEngine:
        client = httpx.Client(transport=httpx.MockTransport(self.handle))
        return VLLMEngine("http://vllm.test", http_client=client)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        with self._lock:
            if path == "/v1/models":
                data = [{"id": BASE, "parent": None}]
                data += [{"id": n, "parent": BASE, "root": p} for n, p in self.adapters.items()]
                return httpx.Response(200, json={"object": "list", "data": data})
            if path == "/v1/load_lora_adapter":
                if not (Path(body["lora_path"]) / "adapter_config.json").is_file():
                    message = f"No adapter found for {body['lora_path']}"
                    return httpx.Response(400, json={"error": {"message": message}})
                if body["lora_name"] in self.adapters:
                    message = f"The lora adapter '{body['lora_name']}' has already been loaded."
                    return httpx.Response(400, json={"error": {"message": message}})
                self.adapters[body["lora_name"]] = body["lora_path"]
                return httpx.Response(200, text="Success")
            if path == "/v1/unload_lora_adapter":
                if self.adapters.pop(body["lora_name"], None) is None:
                    return httpx.Response(404, json={"error": {"message": "not found"}})
                return httpx.Response(200, text="Success")
        if path == "/v1/chat/completions":
            return self._chat(body)  # outside the lock: answers overlap, as vLLM's do
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    def _chat(self, body: dict) -> httpx.Response:
        model = body["model"]
        with self._lock:
            if model != BASE and model not in self.adapters:
                message = f"The model `{model}` does not exist."
                return httpx.Response(404, json={"error": {"message": message, "code": 404}})
            self.asked.append(model)
        text = self.answer(model, body["messages"][-1]["content"])
        sure = model != BASE  # the base model doubts (margin 0.5), an adapter does not (2.0)
        content = _tokens(text, -0.1, -2.1 if sure else -0.6)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": content},
            "finish_reason": "stop",
        }
        usage = {"prompt_tokens": 5, "completion_tokens": len(text), "total_tokens": 5 + len(text)}
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )
