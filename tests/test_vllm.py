"""The served path on a real vLLM server (its CPU build, set up by ./run in .venv-vllm)
with the embedded SmolLM2-135M: answers and log-probabilities agree with the in-process
model, and a thread of the graph trains an adapter, registers it with the server at run
time and retries with it there.

The server runs in float32 here, as ChatSage does, and the two agree exactly: the same
text, token log-probabilities within 0.01 nats. In bfloat16 (``sage-agent serve``'s
default on a CPU with bf16 kernels) the text differs on knife-edge answers; see
benchmarks/results/serving.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from sage_agent.serving import ServerLimits, ServerSpec, VLLMEngine, VLLMServer, served_weights

pytestmark = [pytest.mark.system, pytest.mark.embedded]

LOGPROB_TOLERANCE = 0.01
"""nats: both compute in float32; what is left is the order of additions."""


def _vllm_python() -> str:
    python = os.environ.get("SAGE_VLLM_PYTHON")
    usable = (
        python
        and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0
    )
    if not usable:
        reason = "no Python with vLLM (set SAGE_VLLM_PYTHON; ./run sets up .venv-vllm)"
        if os.environ.get("SAGE_REQUIRE_VLLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(python)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    python = _vllm_python()
    folder = tmp_path_factory.mktemp("vllm")
    spec = ServerSpec(
        served_weights(cache=folder),
        "smollm2",
        port=_free_port(),
        dtype="float32",
        limits=ServerLimits(kv_cache_gib=2),
        python=python,
    )
    with (folder / "server.log").open("w") as log, VLLMServer(spec, log) as running:
        yield running


def test_the_server_answers_as_the_in_process_model(server, embedded_chat) -> None:
    engine = VLLMEngine(server.url)
    prompts = [
        f"Compute {a} {op} {b}. Reply with the number only."
        for a, op, b in [
            (17, "+", 25),
            (943, "-", 58),
            (12, "*", 34),
            (96, "/", 8),
            (7, "*", 8),
            (305, "+", 96),
            (81, "-", 19),
            (640, "/", 32),
        ]
    ]
    for prompt in prompts:
        local = embedded_chat.invoke(prompt, top_logprobs=2, max_tokens=32)
        served = engine.invoke(prompt, max_tokens=32)
        assert served.text == local.text, prompt
        here = local.response_metadata["logprobs"]["content"]
        there = served.response_metadata["logprobs"]["content"]
        assert [t["token"] for t in there] == [t["token"] for t in here]
        for a, b in zip(here, there, strict=True):
            assert abs(a["logprob"] - b["logprob"]) < LOGPROB_TOLERANCE, prompt
        assert served.response_metadata["logits_margin_mean"] == pytest.approx(
            local.response_metadata["logits_margin_mean"], abs=LOGPROB_TOLERANCE
        )


def test_a_thread_retries_with_an_adapter_registered_at_run_time(
    server, tmp_path: Path, embedded_embeddings
) -> None:
    from sage_agent import ChatSage, SageAgent
    from sage_agent.app.demo import DEMO_BUFFER, DEMO_OPERATORS, DEMO_STORE
    from sage_agent.tasks.problems import generate_problems

    engine = VLLMEngine(server.url)
    agent = SageAgent(
        tmp_path / "sage.db",
        ChatSage(),
        embeddings=embedded_embeddings,
        buffer_config=DEMO_BUFFER,
        store_config=DEMO_STORE,
        engine=engine,
    )
    tasks = [
        {**task, "id": f"p{i}"}
        for i, task in enumerate(generate_problems(60, 0, operators=DEMO_OPERATORS))
    ]
    summary = agent.run(tasks, stop_when=lambda s: s.retries > 0)
    assert summary.adapters_trained >= 1 and summary.retries >= 1
    served = {m["id"]: m.get("parent") for m in engine.served()}
    kept = [a.id for a in agent.store.adapters()]
    assert kept and all(served.get(a) == "smollm2" for a in kept)  # registered as kept
    retries = [
        attempt
        for thread in summary.threads
        for record in agent.state(thread)["records"]
        for attempt in record["attempts"]
        if attempt["kind"] == "retry"
    ]
    assert retries and all(r["adapter"] in served for r in retries)
    assert all(r["answer"] is not None and r["logits_margin"] is not None for r in retries)
