"""One process of a concurrency test (tests/test_concurrency.py, bench_reliability.py):

    python tests/load_run.py writer DB DATA MODEL SECONDS   # `sage-agent run`, again and again
    python tests/load_run.py reader DB SECONDS               # trace / adapters / clusters

Both go through the command line's own ``main`` on the tiny llama with bag-of-words
embeddings (tests/crash_run.py sets them up), for at least one round and until SECONDS
have passed, and print one JSON line: the operations done and the failures seen. A
reader's "no database" or "no threads yet" before the first run has written is not a
failure; anything else printed as an error, a traceback or a lock is.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from sage_agent.app.cli import main
from tests.crash_run import use_the_tiny_setup

NOT_YET = ("no database at", "holds no threads yet")


def _call(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except Exception as error:  # a bug: counted, never hidden
            code, err = 99, io.StringIO(f"{type(error).__name__}: {error}")
    return code, out.getvalue(), err.getvalue()


def writer(db: str, data: str, model: str, seconds: float) -> dict:
    runs, failures, deadline = [], [], time.monotonic() + seconds
    while not runs or time.monotonic() < deadline:
        argv = ["run", "--data", data, "--db", db, "--model", model, "--buffer-size", "10"]
        code, out, err = _call([*argv, "--json"])
        if code != 0:
            failures.append(err.strip().splitlines()[-1] if err.strip() else f"exit {code}")
            continue
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"runs": runs, "failures": failures}


def reader(db: str, seconds: float) -> dict:
    done, failures, deadline = 0, [], time.monotonic() + seconds
    commands = [
        ["trace", "--db", db, "--format", "json"],
        ["adapters", "list", "--db", db, "--json"],
        ["clusters", "list", "--db", db, "--json"],
    ]
    while done < len(commands) or time.monotonic() < deadline:
        code, _, err = _call(commands[done % len(commands)])
        done += 1
        if code != 0 and not any(text in err for text in NOT_YET):
            failures.append(err.strip()[-300:])
    return {"operations": done, "failures": failures}


if __name__ == "__main__":
    use_the_tiny_setup()
    role, args = sys.argv[1], sys.argv[2:]
    result = (
        writer(*args[:3], float(args[3])) if role == "writer" else reader(args[0], float(args[1]))
    )
    print(json.dumps(result))
