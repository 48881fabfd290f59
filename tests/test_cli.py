"""The command line on the tiny llama: run / eval / trace / adapters / clusters, --json
keys of DESIGN.md, resume, and bad input (exit code 1 and one line, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sage_agent.context
from sage_agent.app.cli import main
from sage_agent.database import SCHEMA_VERSION, open_database

DESIGN_KEYS = {
    "problems",
    "steps",
    "step_em",
    "problem_em",
    "mae",
    "mse",
    "ner",
    "triggers",
    "clusters",
    "adapters_trained",
    "retries",
    "retry_success",
    "wall_s",
    "threads",
}


@pytest.fixture(autouse=True)
def no_embedded_embeddings(monkeypatch: pytest.MonkeyPatch, bow_embeddings) -> None:
    monkeypatch.setattr(sage_agent.context, "LazyDefaultEmbeddings", type(bow_embeddings))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.jsonl"
    lines = [
        json.dumps(
            {
                "question": f"Tom has {a} boxes of 6 pens and gives away 5. How many are left?",
                "answer": f"Pens? ** {a}*6 = <<{a}*6={a * 6}>>{a * 6}\n"
                f"Left? ** {a * 6}-5 = <<{a * 6}-5={a * 6 - 5}>>{a * 6 - 5}\n#### {a * 6 - 5}",
            }
        )
        for a in (2, 3, 4)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_eval_trace_adapters_clusters(data, tmp_path, tiny_model_dir, capsys) -> None:
    db = tmp_path / "sage.db"
    common = ["--data", str(data), "--db", str(db), "--model", str(tiny_model_dir), "--json"]
    assert main(["run", *common]) == 0
    summary = _last_json(capsys)
    assert set(summary) >= DESIGN_KEYS
    assert summary["problems"] == 3 and summary["steps"] == 6 and len(summary["threads"]) == 3

    assert main(["eval", *common, "--limit", "1", "--no-adapters"]) == 0
    assert _last_json(capsys)["problems"] == 1

    thread = summary["threads"][0]
    assert main(["trace", thread, "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "anomaly_score" in table and "Compute 2*6" in table
    assert main(["trace", "--db", str(db), "--format", "json"]) == 0
    latest = json.loads(capsys.readouterr().out)
    assert latest["rows"] and latest["path"][0] == "decompose"
    assert [t["node"] for t in latest["timings"]] == latest["path"]  # a time per node run
    assert main(["trace", "--db", str(db), "--format", "mermaid"]) == 0
    assert "lora_store" in capsys.readouterr().out
    page = tmp_path / "t.html"
    assert main(["trace", thread, "--db", str(db), "--format", "html", "--out", str(page)]) == 0
    assert "<h1>Thread" in page.read_text() and str(page) in capsys.readouterr().out
    report = tmp_path / "r.html"
    assert main(["report", summary["run_id"], "--db", str(db), "--out", str(report)]) == 0
    assert str(report) in capsys.readouterr().out
    assert summary["run_id"] in report.read_text()
    assert len(list((tmp_path / "r-threads").glob("*.html"))) == 3

    assert main(["adapters", "list", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["clusters", "list", "--db", str(db), "--json"]) == 0
    assert "clusters" in json.loads(capsys.readouterr().out)


def test_bad_input_exits_1_with_one_line(data, tmp_path, tiny_model_dir, capsys) -> None:
    db = tmp_path / "sage.db"
    sage_agent.agent.SageAgent(db, str(tiny_model_dir))  # an empty project database
    cases = [
        (["run", "--data", str(tmp_path / "missing.jsonl"), "--db", str(db)], "does not exist"),
        (["trace", "--db", str(tmp_path / "none.db")], "no database at"),
        (["run", "--resume", "--db", str(db)], "no unfinished run"),
        (["adapters", "show", "nope", "--db", str(db)], "no adapter 'nope'"),
        (["trace", "nope", "--db", str(db)], "no thread 'nope'"),
        (["report", "nope", "--db", str(db)], "no run 'nope'"),
        (["report", "--db", str(db)], "holds no runs yet"),
        (
            ["run", "--data", str(data), "--db", str(db), "--model", "no/such-model-xyz"],
            "no/such-model-xyz",
        ),
        (
            [*["run", "--data", str(data), "--db", str(db)], "--buffer-size", "2"],
            "buffer_size (2) must be at least min_cluster_size",
        ),
        (
            [*["run", "--data", str(data), "--db", str(db)], "--min-cluster", "1"],
            "min_train_samples must be at least 4",
        ),
        ([*["run", "--data", str(data), "--db", str(db)], "--budget", "nan"], "--budget must"),
        ([*["run", "--data", str(data), "--db", str(db)], "--budget", "-5"], "--budget must"),
        ([*["run", "--data", str(data), "--db", str(db)], "--limit", "0"], "--limit must"),
        (
            [*["eval", "--data", str(data), "--db", str(db)], "--concurrency", "0"],
            "--concurrency must be at least 1",
        ),
        (
            [
                *["eval", "--data", str(data), "--db", str(db)],
                *["--model", str(tiny_model_dir), "--engine", "http://127.0.0.1:9"],
            ],
            "no vLLM server answers at http://127.0.0.1:9",
        ),
        (
            [
                *["serve", "--model", str(tiny_model_dir), "--port", "9"],
                *["--vllm-python", str(tmp_path / "no-python")],
            ],
            "cannot start vLLM",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text() + "{oops\n")
    argv = ["run", "--data", str(bad), "--db", str(db), "--model", str(tiny_model_dir)]
    assert main([*argv, "--strict", "--limit", "9"]) == 1
    assert f"{bad}:4" in capsys.readouterr().err

    newer = tmp_path / "newer.db"
    open_database(newer)["meta"].update("schema_version", {"value": str(SCHEMA_VERSION + 1)})
    assert main(["clusters", "list", "--db", str(newer)]) == 1
    assert "Upgrade sage-agent" in capsys.readouterr().err


def test_run_resume_continues_the_unfinished_run(data, tmp_path, tiny_model_dir, capsys) -> None:
    db = tmp_path / "sage.db"
    agent = sage_agent.agent.SageAgent(db, str(tiny_model_dir))
    agent.db["runs"].insert(
        {
            "id": "r1",
            "mode": "run",
            "started": 1.0,
            "finished": None,
            "summary": None,
            "options": json.dumps({"data": str(data), "limit": 2, "strict": False}),
        }
    )
    assert main(["run", "--resume", "--db", str(db), "--model", str(tiny_model_dir), "--json"]) == 0
    summary = _last_json(capsys)
    assert summary["run_id"] == "r1" and summary["problems"] == 2


def test_buffer_size_and_min_cluster_apply_and_resume_with_the_run(
    data, tmp_path, tiny_model_dir, capsys
) -> None:
    from sage_agent.app.cli import _apply_sizes

    agent = sage_agent.agent.SageAgent(tmp_path / "sizes.db", str(tiny_model_dir))
    _apply_sizes(agent, 7, 6)
    assert agent.buffer.config.buffer_size == 7 and agent.store.config.min_train_samples == 6
    # A resumed run takes the sizes it was started with: here a recorded invalid one.
    db = tmp_path / "sage.db"
    sage_agent.agent.SageAgent(db, str(tiny_model_dir)).db["runs"].insert(
        {
            "id": "r1",
            "mode": "run",
            "started": 1.0,
            "finished": None,
            "summary": None,
            "options": json.dumps(
                {"data": str(data), "limit": 2, "strict": False, "buffer_size": 3}
            ),
        }
    )
    assert main(["run", "--resume", "--db", str(db), "--model", str(tiny_model_dir)]) == 1
    assert "buffer_size (3) must be at least" in capsys.readouterr().err


def _unfinished(db: Path, tiny_model_dir: Path, mode: str, options: dict) -> None:
    sage_agent.agent.SageAgent(db, str(tiny_model_dir)).db["runs"].insert(
        {
            "id": "r1",
            "mode": mode,
            "started": 1.0,
            "finished": None,
            "summary": None,
            "options": json.dumps(options),
        }
    )


def test_a_resumed_run_keeps_its_options_and_refuses_others(
    data, tmp_path, tiny_model_dir, capsys
) -> None:
    db = tmp_path / "sage.db"
    started = {"data": str(data), "limit": 2, "model": str(tiny_model_dir), "budget": 60.0}
    _unfinished(db, tiny_model_dir, "run", started)
    refused = main(["run", "--resume", "--db", str(db), "--budget", "900"])
    assert refused == 1
    assert "was started with --budget 60.0" in capsys.readouterr().err
    assert main(["eval", "--resume", "--db", str(db)]) == 1
    assert "is a run run; resume it with `sage-agent run --resume`" in capsys.readouterr().err
    assert main(["run", "--resume", "--db", str(db), "--budget", "60", "--json"]) == 0
    summary = _last_json(capsys)
    assert summary["run_id"] == "r1" and summary["problems"] == 2  # limit and model kept


def test_an_eval_run_resumes_as_an_eval_run(data, tmp_path, tiny_model_dir, capsys) -> None:
    db = tmp_path / "sage.db"
    _unfinished(db, tiny_model_dir, "eval", {"data": str(data), "model": str(tiny_model_dir)})
    assert main(["run", "--resume", "--db", str(db)]) == 1
    assert "eval --resume" in capsys.readouterr().err
    assert main(["eval", "--resume", "--db", str(db), "--json"]) == 0
    assert _last_json(capsys)["run_id"] == "r1"
    agent = sage_agent.agent.SageAgent(db, str(tiny_model_dir))
    assert agent.buffer.buffered() == [] and agent.buffer.clusters() == []  # trained nothing


def test_the_demo_starts_afresh_deleting_only_what_it_made(tmp_path, tiny_model_dir) -> None:
    from sage_agent.app.demo import _start_afresh
    from sage_agent.store import adapter_root

    db = tmp_path / "sage-demo.db"
    agent = sage_agent.agent.SageAgent(db, str(tiny_model_dir))
    agent.db["meta"].insert({"key": "demo", "value": "1"})
    root = adapter_root(db)
    (root / "0123456789ab").mkdir(parents=True)  # an adapter of the last demo
    (root / "0123456789ab" / "adapter_model.safetensors").write_bytes(b"w")
    (root / "my-notes.txt").write_text("not the demo's")
    _start_afresh(db)
    assert not db.exists() and [p.name for p in root.iterdir()] == ["my-notes.txt"]
    (root / "my-notes.txt").unlink()
    _start_afresh(db)  # nothing there: nothing to do
    assert not root.exists()


def test_the_demo_replaces_a_demo_database_of_an_earlier_version(tmp_path, tiny_model_dir) -> None:
    from sage_agent.app.demo import _start_afresh

    db = tmp_path / "sage-demo.db"  # no marker, but only runs of generated problems
    sage_agent.agent.SageAgent(db, str(tiny_model_dir)).db["runs"].insert(
        {"id": "r", "mode": "run", "options": json.dumps({"data": "generated"})}
    )
    _start_afresh(db)
    assert not db.exists()
    mine = tmp_path / "mine.db"
    sage_agent.agent.SageAgent(mine, str(tiny_model_dir)).db["runs"].insert(
        {"id": "r", "mode": "run", "options": json.dumps({"data": "gsm8k.jsonl"})}
    )
    with pytest.raises(sage_agent.RunError, match="is not a demo database"):
        _start_afresh(mine)
    assert mine.exists()


def test_a_bbh_file_runs_and_evaluates_with_label_metrics(tmp_path, tiny_model_dir, capsys) -> None:
    data = tmp_path / "web_of_lies.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"web_of_lies-{i}", "input": f"Does person {i} lie?", "target": t})
            for i, t in enumerate(["Yes", "No", "Yes"])
        ).replace("}{", "}\n{")
        + "\n"
    )
    db = tmp_path / "sage.db"
    common = ["--data", str(data), "--db", str(db), "--model", str(tiny_model_dir), "--json"]
    assert main(["run", *common]) == 0
    labels = _last_json(capsys)["labels"]
    assert labels["family"] == "bbh:web_of_lies" and labels["n"] == 3
    assert labels["columns"] == ["Yes", "No", "(none)"] and sum(map(sum, labels["confusion"])) == 3
    assert main(["eval", *common, "--no-adapters"]) == 0
    summary = _last_json(capsys)
    assert summary["steps"] == 3 and summary["step_em"] == summary["labels"]["accuracy"]
    assert (
        main(["report", summary["run_id"], "--db", str(db), "--out", str(tmp_path / "r.html")]) == 0
    )
    assert "Confusion of labels" in (tmp_path / "r.html").read_text()
