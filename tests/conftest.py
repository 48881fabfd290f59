"""Shared fixtures: a tiny llama made here (no download), and the embedded models loaded
once per session."""

from __future__ import annotations

import os

# Tests never reach a model hub: an unknown id must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from langchain_core.embeddings import Embeddings

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Compute 16-3-4. Reply with the number only.",
    "Tom has 4 boxes of 6 pens and gives away 5 pens. How many pens are left?",
    "What is 2+3? The answer is 5. Hello, how are you today?",
    "0123456789 + - * / = ( ) % $ , . ? !",
] * 20


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer llama with a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|im_end|>", "<|im_start|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_chat(tiny_model_dir: Path):
    from sage_agent import ChatSage

    return ChatSage(model=str(tiny_model_dir), max_tokens=12)


class BagOfWordsEmbeddings(Embeddings):
    """Hashes words into 64 buckets: texts sharing words get a high cosine. Unit tests only."""

    def _vector(self, text: str) -> list[float]:
        vector = np.zeros(64)
        for word in text.lower().split():
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return vector.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


@pytest.fixture
def bow_embeddings() -> Embeddings:
    return BagOfWordsEmbeddings()


@pytest.fixture(scope="session")
def embedded_chat():
    """The embedded SmolLM2-135M-Instruct, loaded once for the session."""
    from sage_agent import ChatSage

    model = ChatSage(max_tokens=24)
    model.hf_model  # noqa: B018 - load now, once
    return model


@pytest.fixture(scope="session")
def embedded_embeddings():
    from sage_agent import default_embeddings

    return default_embeddings()
