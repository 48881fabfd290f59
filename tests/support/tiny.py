"""The tiny llama the fast tests run on (made here, no download), bag-of-words embeddings,
and the "every answer is 9" setup the graph tests and benchmarks share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from langchain_core.embeddings import Embeddings

from sage_agent import ChatSage, SageAgent
from sage_agent.buffer import BufferConfig
from sage_agent.store import StoreConfig

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


# The tiny random model learns "every answer is 9" in seconds (see test_store.py); no
# prompt holds a 9, so its random first answers fail.
NINES = StoreConfig().replace(
    learning_rates=(5e-3, 2e-2),
    epochs=(6,),
    ranks=(4, 8),
    last_layers=(None,),
    max_trials=3,
    n_random=2,
    top_k=1,
    min_train_samples=6,
    train_size=0,
    val_variants=0,
)

SMALL_BUFFER = BufferConfig(buffer_size=10, min_cluster_size=3)


def nine_task(i: int) -> dict:
    """A one-step problem whose answer is 9, e.g. "2+7"."""
    a = 1 + i % 8
    expression = f"{a}+{9 - a}"
    return {
        "id": f"t{i}",
        "question": f"Add {a} and {9 - a}.",
        "answer": f"What is the sum? ** {expression} = <<{expression}=9>>9\n#### 9",
    }


def nines_agent(db: Path, tiny_model_dir: Path, embeddings, engine: Any = None) -> SageAgent:
    """A SageAgent on the tiny llama that learns "every answer is 9" (NINES); ``engine``
    answers instead of it when given."""
    chat = ChatSage(model=str(tiny_model_dir), max_tokens=4)
    return SageAgent(
        db,
        chat,
        embeddings=embeddings,
        buffer_config=SMALL_BUFFER,
        store_config=NINES,
        engine=engine,
    )
