"""The embedded models: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from langchain_core.messages import AIMessage

from sage_agent import ChatSage, Trigger, arithmetic_verifier
from sage_agent.app.cli import main
from sage_agent.tasks.steps import ATOMIC_PROMPT

pytestmark = pytest.mark.embedded


def test_invoke_reports_logprobs_and_margin(embedded_chat: ChatSage) -> None:
    result = embedded_chat.invoke("What is 2+3?")
    assert isinstance(result, AIMessage) and result.content
    meta = result.response_metadata
    assert meta["model_name"] == "SmolLM2-135M-Instruct"
    assert meta["logprobs"]["content"] and len(meta["logits_margin"]) > 0
    assert meta["logits_margin_mean"] > 0
    assert result.usage_metadata["output_tokens"] > 0


def test_stream_yields_words(embedded_chat: ChatSage) -> None:
    chunks = [c.content for c in embedded_chat.stream("Say hello to the world.")]
    assert sum(1 for c in chunks if c) >= 3


def test_batch_matches_single_calls(embedded_chat: ChatSage) -> None:
    prompts = [ATOMIC_PROMPT.format(expression=e) for e in ("4*6", "24-5", "100/4", "7+8+9")]
    singles = [embedded_chat.invoke(p).content for p in prompts]
    assert [m.content for m in embedded_chat.batch(prompts)] == singles


def test_default_embeddings_are_offline_and_normalised(embedded_embeddings) -> None:
    vectors = np.array(
        embedded_embeddings.embed_documents(
            ["Tom has 3 apples.", "Tom has 7 apples.", "The stock market fell sharply today."]
        )
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_trigger_on_real_answers(embedded_chat: ChatSage, embedded_embeddings) -> None:
    trigger = Trigger(embeddings=embedded_embeddings, verifier=arithmetic_verifier)
    answer = embedded_chat.invoke(ATOMIC_PROMPT.format(expression="3+5"))
    result = trigger.score(
        answer.text,
        expression="3+5",
        logits_margin=answer.response_metadata["logits_margin"],
    )
    assert result.reference == "8" and result.mode == "reference"
    assert set(result.metrics) >= {"lm", "bleu", "rouge_l", "cosine"}
    assert result.failed == (not result.numeric_match)
    assert trigger.score("8", "8", logits_margin=4.0).anomaly_score < 0.2
    assert trigger.score("The weather is nice.", "8", logits_margin=4.0).failed


def test_demo_command_runs_the_graph(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    db = tmp_path / "demo.db"
    assert main(["demo", "--problems", "2", "--seed", "3", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "2 problems" in out and "step exact match" in out
    report = tmp_path / "demo-report.html"
    assert f"run report: {report}" in out and report.is_file()
    assert len(list((tmp_path / "demo-report-threads").glob("*.html"))) == 2
    assert main(["trace", "--db", str(db)]) == 0
    assert "anomaly_score" in capsys.readouterr().out


def test_plain_questions_run_end_to_end_with_the_llm_decomposer(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """Generated problems given as questions only: the embedded model plans, each plan's
    steps are answered and scored by the verifier, and each problem reports an answer."""
    from sage_agent.tasks.problems import generate_problems

    data = tmp_path / "questions.jsonl"
    problems = generate_problems(3, seed=21)
    lines = [json.dumps({"id": f"q{i}", "question": p["question"]}) for i, p in enumerate(problems)]
    data.write_text("\n".join(lines) + "\n")
    db = str(tmp_path / "plain.db")
    assert main(["run", "--data", str(data), "--db", db, "--decompose", "llm", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["problems"] == 3 and summary["steps"] >= 3 and not summary["errors"]
    assert set(summary["answers"]) == {"q0", "q1", "q2"}
    assert all(summary["answers"].values())
    for thread in summary["threads"]:
        assert main(["trace", thread, "--db", db, "--format", "json"]) == 0
        trace = json.loads(capsys.readouterr().out)
        assert trace["result"]["reference"] is None and trace["result"]["correct"] is None
        # no reference answer: every step is scored against the verifier's value
        assert all(row["reference"] is not None for row in trace["rows"])


def test_buffer_on_600_atoms_is_homogeneous_and_persistent(embedded_embeddings, tmp_path) -> None:
    from sklearn.metrics import homogeneity_score

    from sage_agent.buffer import TriggerBuffer
    from sage_agent.tasks.problems import generate_steps

    steps = generate_steps(300, seed=11)[:600]
    assert len(steps) == 600
    path = tmp_path / "sage.sqlite"
    buffer = TriggerBuffer(path, embeddings=embedded_embeddings)
    for step in steps:  # one add at a time, as a stream
        buffer.add(
            ATOMIC_PROMPT.format(expression=step.expression),
            payload={"expression": step.expression, "reference": step.reference},
        )
    clusters = buffer.clusters()
    assert len(clusters) >= 4
    operator = {s.expression: s.tag for s in steps}
    truth = [operator[m.payload["expression"]] for c in clusters for m in c.samples]
    found = [c.id for c in clusters for _ in c.samples]
    assert len(found) >= 200
    assert homogeneity_score(truth, found) >= 0.9
    reopened = TriggerBuffer(path, embeddings=embedded_embeddings).clusters()
    assert [(c.id, c.size, [m.id for m in c.samples]) for c in reopened] == [
        (c.id, c.size, [m.id for m in c.samples]) for c in clusters
    ]
