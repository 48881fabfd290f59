"""`langgraph dev` serves the SAGE graph of langgraph.json: a thread runs through the
server's HTTP API on localhost with a JSON context, and a missing context is refused."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.tiny import nine_task

pytestmark = pytest.mark.system  # starts processes or a server

ROOT = Path(__file__).parent.parent
CLI = Path(sys.executable).with_name("langgraph")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    if not CLI.exists():
        pytest.fail("langgraph-cli is not installed: pip install -e '.[studio]'")
    work = tmp_path_factory.mktemp("studio")
    for name in ("langgraph.json", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    for folder in ("sage_agent", "graphs", "tools"):
        (work / folder).symlink_to(ROOT / folder)
    port = _free_port()
    process = subprocess.Popen(
        [
            str(CLI),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=work,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "LANGGRAPH_NO_ANALYTICS": "1",
            "SAGE_STUDIO_MODELS": str(tiny_model_dir),  # the server's root: its cwd
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/ok").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"langgraph dev did not start: {process.stderr.read()[-3000:]!r}")
        time.sleep(0.5)
    yield client, work
    client.close()
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def test_a_thread_runs_through_the_http_api(server, tiny_model_dir: Path) -> None:
    client, work = server
    thread = client.post("/threads", json={}).json()["thread_id"]
    context = {"db": "studio.db", "model": str(tiny_model_dir)}
    run = client.post(
        f"/threads/{thread}/runs/wait",
        json={"assistant_id": "sage", "input": {"task": nine_task(1)}, "context": context},
    )
    assert run.status_code == 200, run.text
    output = run.json()
    assert output["records"][0]["expression"] == "2+7"
    assert output["result"]["reference"] == "9" and output["thread_id"] == thread
    assert (work / "studio.db").is_file()  # the buffer and store wrote to the given db
    state = client.get(f"/threads/{thread}/state").json()
    assert state["values"]["result"]["steps"] == 1 and state["next"] == []


@pytest.mark.parametrize("context", [None, {}, {"database": "x.db"}])
def test_a_missing_or_wrong_context_is_refused(server, context) -> None:
    client, work = server
    thread = client.post("/threads", json={}).json()["thread_id"]
    body = {"assistant_id": "sage", "input": {"task": nine_task(1)}}
    if context is not None:
        body["context"] = context
    error = client.post(f"/threads/{thread}/runs/wait", json=body).json()["__error__"]
    assert error["error"] == "ValidationError"  # the server drops keys it does not know
    assert "StudioContext\ndb\n  Field required" in error["message"]
    assert not (work / "sage.db").exists()  # never a silent default database


def _refusal(client: httpx.Client, context: dict) -> dict:
    thread = client.post("/threads", json={}).json()["thread_id"]
    body = {"assistant_id": "sage", "input": {"task": nine_task(1)}, "context": context}
    return client.post(f"/threads/{thread}/runs/wait", json=body).json()["__error__"]


def test_a_db_outside_the_root_is_refused_and_nothing_is_created(server, tmp_path) -> None:
    client, work = server
    outside = tmp_path / "outside"
    outside.mkdir()
    (work / "link").symlink_to(outside)
    for db in (str(outside / "abs.db"), "../escaped.db", "link/through.db"):
        error = _refusal(client, {"db": db})
        # refused by the context's schema; a symlink, found on the file system, by the run
        assert error["error"] in ("ValidationError", "ContextError"), error
        assert "inside the server's root" in error["message"] or "outside" in error["message"]
    assert list(outside.iterdir()) == [] and not (work.parent / "escaped.db").exists()


def test_a_model_the_operator_did_not_allow_is_refused(server, tmp_path) -> None:
    client, work = server
    error = _refusal(client, {"db": "other.db", "model": str(tmp_path)})
    assert error["error"] == "ValidationError" and "SAGE_STUDIO_MODELS" in error["message"]
    assert not (work / "other.db").exists()
