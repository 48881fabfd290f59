"""An exported adapter is a plain peft folder: plain ``PeftModel.from_pretrained`` on the
same base model gives ChatSage's answers."""

from __future__ import annotations

import json
import shutil

import torch
from langchain_core.messages import HumanMessage

from sage_agent import ChatSage, SageAgent
from sage_agent.app.cli import main
from tests.support.tiny import NINES, SMALL_BUFFER, nine_task


def test_an_exported_adapter_loads_in_plain_peft(tiny_model_dir, tmp_path, bow_embeddings, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    agent = SageAgent(
        tmp_path / "sage.db",
        chat,
        embeddings=bow_embeddings,
        buffer_config=SMALL_BUFFER,
        store_config=NINES,
    )
    agent.run([nine_task(i) for i in range(24)], stop_when=lambda s: s.adapters_trained > 0)
    adapter = agent.store.adapters()[0]
    out = tmp_path / "export"
    assert (
        main(["adapters", "export", adapter.id, "--to", str(out), "--db", str(agent.db_path)]) == 0
    )
    assert f"exported adapter {adapter.id}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    readme = (out / "README.md").read_text()
    assert "within vLLM's default max_lora_rank of 16" in readme and "DoRA: no" in readme
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)

    prompts = [f"Compute {a}+{9 - a}. Reply with the number only." for a in (2, 5)]
    name = agent.store.load(adapter.id)
    expected = [chat.invoke(p, adapter=name, max_tokens=4).text for p in prompts]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    model.eval()
    for prompt, answer in zip(prompts, expected, strict=True):
        text = chat.render_prompt([HumanMessage(prompt)])
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**ids, max_new_tokens=4, do_sample=False)
        generated = tokenizer.decode(
            output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert generated == answer

    assert (
        main(["adapters", "export", adapter.id, "--to", str(out), "--db", str(agent.db_path)]) == 1
    )
    assert "is not an empty folder" in capsys.readouterr().err

    # a broken adapter, and one whose folder is gone, are refused in one line, leaving nothing
    with agent.db.conn:
        agent.db["adapters"].update(adapter.id, {"status": "broken"})
    for to in ("broken", "gone"):
        if to == "gone":
            agent.db["adapters"].update(adapter.id, {"status": "ready"})
            shutil.rmtree(adapter.path)
        argv = ["adapters", "export", adapter.id, "--to", str(tmp_path / to)]
        assert main([*argv, "--db", str(agent.db_path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not exported" in err[0]
        assert not (tmp_path / to).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
