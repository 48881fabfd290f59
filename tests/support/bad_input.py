"""The bad-input catalogue of the command line, and what a refused input must leave as it
was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

HANG = 5.0  # seconds: a refusal is immediate; this only catches a hang


def stored(db: Path) -> tuple[list[str], list[str]]:
    """Everything stored: the database's content and the adapter folder's files."""
    connection = sqlite3.connect(db)
    dump = list(connection.iterdump())
    connection.close()
    root = db.with_name(f"{db.stem}-adapters")
    return dump, sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def bad_lines(folder: Path) -> dict[str, Path]:
    lines = {
        "malformed": b'{"question": "q"\n',
        "not-utf8": b'{"question": "caf\xe9"}\n',
        "not-an-object": b'["question"]\n',
        "no-question": b'{"q": "what?"}\n',
        "pubmedqa-no-contexts": b'{"question": "q", "final_decision": "yes"}\n',
        "duplicate-id": b'{"id": "a", "question": "q"}\n{"id": "a", "question": "r"}\n',
        "empty": b"\n\n",
        "huge": b'{"question": "' + b"x" * 60_000 + b'"}\n',
    }
    files = {}
    for name, content in lines.items():
        files[name] = folder / f"{name}.jsonl"
        files[name].write_bytes(content)
    return files


CLI_CASES = [
    # (argv after the command, the expected words)
    (["run", "--data", "{bad[malformed]}", "--strict"], "malformed.jsonl:1"),
    (["run", "--data", "{bad[not-utf8]}", "--strict"], "not UTF-8 (byte 0xe9"),
    (["run", "--data", "{bad[not-an-object]}", "--strict"], "not a JSON object"),
    (["run", "--data", "{bad[no-question]}", "--strict"], 'string "question"'),
    (
        ["run", "--data", "{bad[pubmedqa-no-contexts]}", "--format", "pubmedqa", "--strict"],
        "needs the field 'contexts'",
    ),
    (["run", "--data", "{data}", "--format", "no-such-family"], "unknown task family"),
    (["run", "--data", "{bad[duplicate-id]}", "--strict"], "id 'a' was already used on line 1"),
    (["run", "--data", "{bad[empty]}"], "holds no tasks"),
    (["run", "--data", "{bad[huge]}", "--strict"], "a task is at most 50000"),
    (["run", "--data", "{folder}/missing.jsonl"], "does not exist"),
    (["run", "--data", "{data}", "--budget", "nan"], "--budget must be a positive"),
    (["run", "--data", "{data}", "--budget", "0"], "--budget must be a positive"),
    (["run", "--data", "{data}", "--budget", "-60"], "--budget must be a positive"),
    (["run", "--data", "{data}", "--adapt-seconds", "inf"], "--adapt-seconds must be a"),
    (["run", "--data", "{data}", "--adapt-seconds", "-1"], "--adapt-seconds must be a"),
    (["run", "--data", "{data}", "--limit", "-1"], "--limit must be at least 1"),
    (["run", "--data", "{data}", "--buffer-size", "0"], "buffer_size"),
    (["run", "--data", "{data}", "--min-cluster", "0"], "min_train_samples"),
    (["run", "--resume"], "no unfinished run"),
    (["adapters", "show", "../../x"], "no adapter '../../x'"),
    (["adapters", "rm", "../../etc"], "no adapter '../../etc'"),
    (["adapters", "show"], "needs an adapter id"),
    (["trace", "no-such-thread"], "no thread 'no-such-thread'"),
    (["adapters", "export", "no-such-adapter", "--to", "{folder}/out"], "no adapter"),
    (["report", "no-such-run"], "no run"),
]
