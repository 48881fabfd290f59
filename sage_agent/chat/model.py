"""ChatSage: a local transformers causal LM as a LangChain chat model.

Every generation reports, in ``response_metadata``, the OpenAI-shaped ``logprobs`` of the
generated tokens and the per-token ``logits_margin`` (top-1 minus top-2 raw logit) with
its mean ``logits_margin_mean``: the Trigger's confidence signal. LoRA adapters load onto
the one base model through transformers' PEFT integration, so switching adapters never
copies or re-wraps the model.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun, Callbacks
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, PrivateAttr

from sage_agent.chat.adapters import AdapterSlots
from sage_agent.chat.loading import load_causal_lm
from sage_agent.chat.tokens import TokenStat, answer_end, eos_ids, repeated_line_stop, token_stats
from sage_agent.embedded import EMBEDDED_CHAT_MODEL
from sage_agent.errors import InvalidInput, NotFoundError

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}

# Results of one batched forward, served to BaseChatModel.generate's per-prompt loop so
# that callbacks, tracing and caching stay the base class's own (see ChatSage.generate).
_PRECOMPUTED: ContextVar[dict[tuple, list[ChatResult]] | None] = ContextVar(
    "_PRECOMPUTED", default=None
)


@dataclass(frozen=True)
class _CallParams:
    temperature: float
    max_tokens: int
    top_p: float
    stop: tuple[str, ...]
    top_logprobs: int
    adapter: str | None
    """The adapter this call answers with (None: the base model)."""
    stop_repeated_line: bool = False
    """End the answer before its first line that repeats an earlier one (a plan's loop)."""


class ChatSage(AdapterSlots, BaseChatModel):
    """A local Hugging Face causal LM as a LangChain chat model.

    ``ChatSage()`` is the embedded SmolLM2-135M-Instruct (GGUF, offline). ``model`` also
    takes a hub id found in the local cache, a local folder, or a ``.gguf`` file path.
    Nothing loads at construction; the weights load on first use, once.

    Tool calling is not offered: a 135M model does not follow a tool-call format reliably,
    and the SAGE graph calls its tools from graph nodes, not through the model.
    """

    model_name: str = Field(default=EMBEDDED_CHAT_MODEL, alias="model")
    """Hub id, local folder, .gguf file, or the embedded default's id."""
    temperature: float = 0.0
    """0 is greedy decoding; above 0, sampling at this temperature."""
    max_tokens: int = Field(default=256, ge=1)
    """Maximum number of new tokens per answer."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (only when sampling)."""
    stop: list[str] | None = None
    """Stop sequences: generation ends at the first, which is not part of the answer."""
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """Alternatives reported per token in ``logprobs`` (the OpenAI ``top_logprobs``)."""
    batch_size: int = Field(default=16, ge=1)
    """Prompts per batched forward in ``batch()``."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights' dtype for inference."""
    device: str = "cpu"
    seed: int | None = None
    """Seed for sampling (temperature > 0); greedy decoding needs none."""
    system_prompt: str | None = None
    """System message for conversations that start without one; None keeps the chat
    template's own default (about 20 tokens on SmolLM2; "" saves 16 tokens per prompt,
    see docs/trainer.md for what it does to accuracy)."""
    streaming: bool = False
    """Stream through ``_stream`` even on ``invoke`` (LangChain's convention)."""

    model_config = ConfigDict(populate_by_name=True)

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _adapters: dict[str, str | None] = PrivateAttr(default_factory=dict)
    _active_adapter: str | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "sage-hf-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "dtype": self.dtype,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(
            ls_provider="huggingface-local",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # loading

    @property
    def hf_model(self) -> Any:
        """The underlying transformers model (loads it on first access)."""
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The underlying tokenizer (loads the model on first access)."""
        self._ensure_loaded()
        return self._tokenizer

    @property
    def lock(self) -> threading.RLock:
        """Held while the model generates. Hold it to use ``hf_model`` directly (training,
        a teacher-forced pass) so that no generation runs in between."""
        return self._lock

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                self._model, self._tokenizer = load_causal_lm(
                    self.model_name, self.dtype, self.device
                )

    # generation

    def _call_params(self, stop: list[str] | None, **kwargs: Any) -> _CallParams:
        unknown = set(kwargs) - _CALL_KWARGS
        if unknown:
            raise TypeError(f"ChatSage got unknown generation arguments: {sorted(unknown)}")
        if kwargs.get("model", self.model_name) != self.model_name:
            raise InvalidInput(
                f"ChatSage serves {self.model_name!r}; a per-call model override "
                f"({kwargs['model']!r}) needs a second ChatSage"
            )
        stops = tuple(s for s in (stop if stop is not None else self.stop or []) if s)
        adapter = kwargs.get("adapter", self._active_adapter)
        if adapter is not None and adapter not in self._adapters:
            raise NotFoundError(
                f"no adapter named {adapter!r} is loaded; loaded: {sorted(self._adapters)}"
            )
        return _CallParams(
            temperature=float(kwargs.get("temperature", self.temperature)),
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            stop=stops,
            top_logprobs=int(kwargs.get("top_logprobs", self.top_logprobs)),
            adapter=adapter,
            stop_repeated_line=bool(kwargs.get("stop_repeated_line", False)),
        )

    def render_prompt(self, messages: Sequence[BaseMessage]) -> str:
        """The conversation as the model reads it: the chat template applied, with the
        generation prompt (what training must feed the model to match inference)."""
        chat = []
        if self.system_prompt is not None and (not messages or messages[0].type != "system"):
            chat.append({"role": "system", "content": self.system_prompt})
        for message in messages:
            role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
            if role is None:
                raise InvalidInput(f"ChatSage cannot render a {message.type!r} message")
            chat.append({"role": role, "content": message.text})
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def _encode(self, prompts: list[str], max_tokens: int) -> Any:
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        limit = getattr(self._model.config, "max_position_embeddings", None)
        longest = int(encoded["attention_mask"].sum(dim=1).max())
        if limit is not None and longest + max_tokens > limit:
            raise InvalidInput(
                f"prompt of {longest} tokens plus max_tokens={max_tokens} exceeds the context "
                f"of {self.model_name} ({limit} tokens); shorten the input or lower max_tokens"
            )
        return encoded.to(self.device)

    def _generate_kwargs(self, params: _CallParams, prompt_length: int) -> dict[str, Any]:
        tokenizer = self._tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "output_logits": True,
            "return_dict_in_generate": True,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if self.seed is not None:
                torch.manual_seed(self.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
        if params.stop_repeated_line:
            kwargs["stopping_criteria"] = repeated_line_stop(tokenizer, prompt_length)
        return kwargs

    def _generate_many(
        self, conversations: Sequence[Sequence[BaseMessage]], params: _CallParams
    ) -> list[ChatResult]:
        """Generate for many conversations, ``batch_size`` at a time, left-padded."""
        self._ensure_loaded()
        results: list[ChatResult] = []
        for start in range(0, len(conversations), self.batch_size):
            prompts = [
                self.render_prompt(c) for c in conversations[start : start + self.batch_size]
            ]
            encoded = self._encode(prompts, params.max_tokens)
            with self._lock, self._answering_with(params.adapter), torch.inference_mode():
                width = encoded["input_ids"].shape[1]
                output = self._model.generate(**encoded, **self._generate_kwargs(params, width))
            results.extend(self._results(encoded, output, params))
        return results

    def _results(self, encoded: Any, output: Any, params: _CallParams) -> list[ChatResult]:
        prompt_length = encoded["input_ids"].shape[1]
        generated = output.sequences[:, prompt_length:]
        stats = token_stats(output.logits, generated, params.top_logprobs)
        return [
            ChatResult(
                generations=[
                    ChatGeneration(
                        message=self._message(
                            generated[row].tolist(),
                            [step[row] for step in stats],
                            int(encoded["attention_mask"][row].sum()),
                            params,
                        )
                    )
                ]
            )
            for row in range(generated.shape[0])
        ]

    def _message(
        self, tokens: list[int], stats: list[TokenStat], input_tokens: int, params: _CallParams
    ) -> AIMessage:
        tokenizer = self._tokenizer
        stops = eos_ids(self._model, tokenizer)
        finish_reason = "length"
        produced = len(tokens)
        for i, token in enumerate(tokens):
            if token in stops:
                finish_reason, produced, tokens = "stop", i + 1, tokens[:i]
                break
        pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in tokens]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = answer_end(text, params.stop, params.stop_repeated_line)
        if cut is not None:
            finish_reason, text = "stop", text[:cut]
            kept, length = 0, 0
            while kept < len(pieces) and length < cut:
                length += len(pieces[kept])
                kept += 1
            pieces, produced = pieces[:kept], kept
        stats = stats[: len(pieces)]
        margins = [s.margin for s in stats]
        return AIMessage(
            content=text,
            response_metadata={
                "model_name": self.model_name,
                "model_provider": "huggingface-local",
                "finish_reason": finish_reason,
                "logprobs": {
                    "content": [
                        s.openai(piece, tokenizer) for s, piece in zip(stats, pieces, strict=True)
                    ]
                },
                "logits_margin": margins,
                "logits_margin_mean": sum(margins) / len(margins) if margins else None,
                "adapter": params.adapter,
            },
            usage_metadata=UsageMetadata(
                input_tokens=input_tokens,
                output_tokens=produced,
                total_tokens=input_tokens + produced,
            ),
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        ready = _PRECOMPUTED.get()
        if ready and ready.get(key := self._conversation_key(messages)):
            return ready[key].pop(0)
        return self._generate_many([messages], self._call_params(stop, **kwargs))[0]

    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> LLMResult:
        """Run one batched forward for all prompts, then let BaseChatModel.generate do its
        per-prompt bookkeeping (callbacks, tracing, cache) around the ready results."""
        if len(messages) < 2 or self._should_stream(async_api=False, **kwargs):
            return super().generate(messages, stop=stop, callbacks=callbacks, **kwargs)
        call_kwargs = {k: v for k, v in kwargs.items() if k not in _GENERATE_ONLY_KWARGS}
        results = self._generate_many(messages, self._call_params(stop, **call_kwargs))
        ready: dict[tuple, list[ChatResult]] = defaultdict(list)
        for conversation, result in zip(messages, results, strict=True):
            ready[self._conversation_key(conversation)].append(result)
        token = _PRECOMPUTED.set(ready)
        try:
            return super().generate(messages, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _PRECOMPUTED.reset(token)

    def _conversation_key(self, messages: Sequence[BaseMessage]) -> tuple:
        return (id(self), *((m.type, m.text) for m in messages))

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """One batched generate (left padding, ``batch_size`` prompts per forward) when all
        inputs share one config; otherwise LangChain's default per-input batch."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        shared = {k: v for k, v in configs[0].items() if k != "run_id"}
        same_config = all({k: v for k, v in c.items() if k != "run_id"} == shared for c in configs)
        if return_exceptions or not same_config or len(inputs) < 2:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        conversations = [self._convert_input(i).to_messages() for i in inputs]
        result = self.generate(
            conversations,
            stop=kwargs.pop("stop", None),
            callbacks=shared.get("callbacks"),
            tags=shared.get("tags"),
            metadata=shared.get("metadata"),
            run_name=shared.get("run_name"),
            **kwargs,
        )
        return [generations[0].message for generations in result.generations]

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Tokens as they are generated; the last chunk carries metadata and usage.

        Text that could be the start of a stop sequence is held back until it is known
        not to be one, so a stop sequence never reaches the stream.
        """
        from transformers import TextIteratorStreamer

        params = self._call_params(stop, **kwargs)
        self._ensure_loaded()
        encoded = self._encode([self.render_prompt(messages)], params.max_tokens)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome: dict[str, Any] = {}

        def work() -> None:
            # The lock is taken here, in the generating thread: the caller's thread may
            # change between two chunks (async streaming resumes us in an executor).
            try:
                with self._lock, self._answering_with(params.adapter), torch.inference_mode():
                    outcome["output"] = self._model.generate(
                        **encoded,
                        streamer=streamer,
                        **self._generate_kwargs(params, encoded["input_ids"].shape[1]),
                    )
            except BaseException as error:  # re-raised in the caller's thread below
                outcome["error"] = error
                streamer.end()

        hold = max((len(s) for s in params.stop), default=1) - 1
        emitted = 0
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            text = ""
            for piece in streamer:
                text += piece
                if answer_end(text, params.stop, params.stop_repeated_line) is not None:
                    break
                # an unfinished line may yet repeat an earlier one: it waits for its newline
                line_end = text.rfind("\n") + 1 if params.stop_repeated_line else len(text)
                ready = min(len(text) - hold, line_end)
                if ready > emitted:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text[emitted:ready]))
                    emitted = ready
        finally:
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        final = self._results(encoded, outcome["output"], params)[0].generations[0].message
        if len(final.text) > emitted:
            yield ChatGenerationChunk(message=AIMessageChunk(content=final.text[emitted:]))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                response_metadata=final.response_metadata,
                usage_metadata=final.usage_metadata,
                chunk_position="last",
            )
        )


_GENERATE_ONLY_KWARGS = {"tags", "metadata", "run_name", "run_id"}
# A call's keyword arguments: its _CallParams' (stop comes apart) and LangChain's two.
_CALL_KWARGS = {f.name for f in fields(_CallParams)} - {"stop"} | {"model", "stream"}
