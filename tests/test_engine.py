"""Answering through a vLLM server, against a stand-in of its API (tests/support/fake_vllm):
the adapter named per call, margins from top_logprobs, adapters registered by the store
and shared by workers, errors that say what is wrong, and the whole loop of the graph
with its answers from the server. The real server: tests/test_vllm.py."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import httpx
import pytest

from sage_agent import AdapterError, ChatSage, EngineError, NotFoundError, SageAgent
from sage_agent.scoring.numeric import mean_margin
from sage_agent.serving import VLLMEngine
from sage_agent.store import LoRAStore
from tests.support.fake_vllm import BASE, FakeVLLM, Overlapping
from tests.support.stores import LEARNABLE, make_cluster
from tests.support.tiny import nine_task, nines_agent


def nines(model: str, prompt: str) -> str:
    """The base model says 8 to everything, any adapter 9."""
    return "8" if model == BASE else "9"


@pytest.fixture
def adapter_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "a1"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_the_adapter_is_named_per_call_and_margins_come_from_top_logprobs(adapter_folder) -> None:
    server = FakeVLLM(nines)
    engine = server.engine()
    assert engine.model_name == BASE  # the one model that is not an adapter
    engine.load_adapter(adapter_folder, "a1")
    base = engine.invoke("Add 2 and 7.", max_tokens=4)
    tuned = engine.invoke("Add 2 and 7.", adapter="a1")
    assert (base.text, tuned.text) == ("8", "9")
    assert server.asked == [BASE, "a1"]
    assert base.response_metadata["logits_margin_mean"] == pytest.approx(0.5)
    assert tuned.response_metadata["logits_margin"] == pytest.approx([2.0])
    assert tuned.response_metadata["adapter"] == "a1"
    # ChatOpenAI's own message has no margin of ours: the Trigger reads top_logprobs
    raw = engine.chat_model.invoke("Add 2 and 7.")
    assert "logits_margin_mean" not in raw.response_metadata
    assert mean_margin(raw.response_metadata) == pytest.approx(0.5)


def test_threads_sharing_an_engine_answer_with_their_own_adapters(adapter_folder) -> None:
    server = FakeVLLM(nines)
    engine = server.engine()
    engine.load_adapter(adapter_folder, "a1")
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        answers[i] = engine.invoke(f"question {i}", adapter="a1" if i % 2 else None).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {i: "9" if i % 2 else "8" for i in range(16)}


def test_workers_share_a_registration_and_a_retired_adapter_is_gone(adapter_folder) -> None:
    server = FakeVLLM(nines)
    first, second = server.engine(), server.engine()
    first.load_adapter(adapter_folder, "a1")
    second.load_adapter(adapter_folder, "a1")  # registered already by the other worker
    assert server.adapters == {"a1": str(adapter_folder.absolute())}
    first.delete_adapter("a1")  # an eviction here: the server keeps it for the others
    assert first.adapters == {} and "a1" in server.adapters
    assert second.invoke("q", adapter="a1").text == "9"
    second.retire("a1")
    assert server.adapters == {} and second.adapters == {}
    with pytest.raises(NotFoundError, match="serves no model named 'a1'"):
        second.invoke("q", adapter="a1")
    second.retire("a1")  # retired twice: nothing left to do


def test_an_adapter_the_restarted_server_forgot_is_registered_again(adapter_folder) -> None:
    server = FakeVLLM(nines)
    engine = server.engine()
    engine.load_adapter(adapter_folder, "a1")
    server.adapters.clear()  # a restart: registered here, unknown there
    assert engine.invoke("q", adapter="a1").text == "9"
    assert server.adapters == {"a1": str(adapter_folder.absolute())}


def test_a_refused_adapter_and_an_absent_server_say_what_is_wrong(tmp_path: Path) -> None:
    engine = FakeVLLM(nines).engine()
    with pytest.raises(AdapterError, match=r"refused the adapter 'a1'.*No adapter found"):
        engine.load_adapter(tmp_path / "missing", "a1")
    assert engine.adapters == {}

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    absent = VLLMEngine("http://127.0.0.1:9/v1", http_client=client)
    assert absent.url == "http://127.0.0.1:9"
    with pytest.raises(EngineError, match=r"no vLLM server answers at http://127.0.0.1:9"):
        absent.model_name  # noqa: B018
    with pytest.raises(EngineError, match="no vLLM server answers"):
        absent.load_adapter(tmp_path, "a1")
    named = VLLMEngine("http://127.0.0.1:9", model="m", http_client=client)
    with pytest.raises(EngineError, match="did not answer"):
        named.invoke("q")


def test_the_store_registers_what_it_keeps_and_retires_what_it_removes(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    server = FakeVLLM(nines)
    engine = server.engine()
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    store = LoRAStore(
        tmp_path / "db.sqlite", tmp_path / "a", chat, LEARNABLE, bow_embeddings, engine=engine
    )
    kept = store.optimize(make_cluster(bow_embeddings))
    assert kept and set(server.adapters) == {a.id for a in kept}
    assert server.adapters[kept[0].id] == kept[0].path  # the folder the store wrote
    assert chat.adapters == {}  # the trials trained here; answers come from the server
    engine.delete_adapter(kept[0].id)  # forgotten here (an eviction) ...
    assert store.load(kept[0].id) == kept[0].id  # ... and loaded again through the router
    assert kept[0].id in engine.adapters and chat.adapters == {}
    store.remove(kept[1].id)
    assert kept[1].id not in server.adapters


def test_the_graph_answers_through_the_server_and_retries_with_a_registered_adapter(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    server = FakeVLLM(nines)
    agent = nines_agent(tmp_path / "sage.db", tiny_model_dir, bow_embeddings, server.engine())
    summary = agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.retry_success > 0)
    assert summary.adapters_trained >= 1 and summary.retry_success >= 1
    assert BASE in server.asked and set(server.asked) - {BASE}  # adapters answered too
    assert {a.id for a in agent.store.adapters()} <= set(server.adapters)
    retried = next(r for t in summary.threads for r in agent.state(t)["records"] if r["retries"])
    first, last = retried["attempts"][0], retried["attempts"][-1]
    assert (first["answer"], last["answer"]) == ("8", "9")
    assert first["logits_margin"] == pytest.approx(0.5)


def test_a_run_answers_its_tasks_concurrently_through_the_server(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    slow_eights = Overlapping("8")
    server = FakeVLLM(slow_eights)
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    agent = SageAgent(tmp_path / "sage.db", chat, embeddings=bow_embeddings, engine=server.engine())
    finished: list[str] = []
    summary = agent.run(
        [nine_task(i) for i in range(8)],
        train=False,
        concurrency=4,
        on_task=lambda result: finished.append(result["answer"]),
    )
    assert summary.problems == 8 and finished == ["8"] * 8
    assert 1 < slow_eights.most <= 4  # answers overlapped, never more than the run's threads
    assert chat._model is None  # nothing trained, so the base weights never loaded here


def test_middleware_turns_answer_concurrently_through_the_server(
    tiny_model_dir: Path, tmp_path: Path, bow_embeddings
) -> None:
    from langchain.agents import create_agent

    from sage_agent import SageMiddleware, build_context

    slow_eights = Overlapping("8")
    engine = FakeVLLM(slow_eights).engine()
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    context = build_context(tmp_path / "sage.db", chat, embeddings=bow_embeddings, engine=engine)
    agent = create_agent(engine.chat_model, middleware=[SageMiddleware(context, train="never")])
    questions = [
        {"messages": [{"role": "user", "content": f"Compute {a}+{9 - a}."}]} for a in range(1, 5)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the engine's model is the context's: no warning
        states = agent.batch(questions)
    records = [state["sage_records"][0] for state in states]
    assert [r["answer"] for r in records] == ["8"] * 4
    assert all(r["failed"] and r["reference"] == "9" for r in records)
    assert slow_eights.most > 1  # the turns' model calls overlapped
    assert chat._model is None


def test_the_server_command_enables_runtime_lora_within_the_machines_limits(
    tiny_model_dir: Path,
) -> None:
    from sage_agent.serving import ServerSpec, served_weights
    from sage_agent.training.trainer import supports_bf16

    assert served_weights(str(tiny_model_dir)) == tiny_model_dir  # a folder serves as it is
    spec = ServerSpec(tiny_model_dir, "tiny", port=8123, python="/opt/vllm/bin/python")
    command = spec.command()
    assert command[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--model") == str(tiny_model_dir) and flag("--served-model-name") == "tiny"
    assert flag("--dtype") == ("bfloat16" if supports_bf16("cpu") else "float32")
    assert "--enable-lora" in command and int(flag("--max-lora-rank")) >= 32
    environment = spec.environment()
    assert environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert 1 <= int(environment["VLLM_CPU_KVCACHE_SPACE"]) <= 8


def test_a_port_that_answers_already_is_refused(tiny_model_dir: Path) -> None:
    import http.server

    from sage_agent.serving import ServerSpec, VLLMServer

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    try:
        spec = ServerSpec(tiny_model_dir, "tiny", port=squatter.server_address[1])
        with pytest.raises(EngineError, match="something already answers"):
            VLLMServer(spec).start()
    finally:
        squatter.shutdown()


def test_studio_answers_through_the_operators_server_only(tmp_path: Path, monkeypatch) -> None:
    from pydantic import ValidationError

    from sage_agent.graphs import studio

    with pytest.raises(ValidationError, match="engine"):  # a client cannot name a server
        studio.StudioContext(db="sage.db", engine="http://attacker.example")  # type: ignore[call-arg]
    monkeypatch.setenv("SAGE_STUDIO_ENGINE", "http://127.0.0.1:8000")
    context = studio._context.__wrapped__(tmp_path, "sage.db", None)
    assert context.engine is not None and context.engine.url == "http://127.0.0.1:8000"
    assert context.store is not None and context.store.engine is context.engine
