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
def server(tmp_path_factory: pytest.TempPathFactory):
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
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LANGGRAPH_NO_ANALYTICS": "1"},
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
    context = {"db": str(work / "studio.db"), "model": str(tiny_model_dir)}
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
