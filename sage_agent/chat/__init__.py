"""ChatSage, a local Hugging Face causal LM as a LangChain chat model.

model (generation, batching, streaming), adapters (peft adapter slots on the one base
model), tokens (log-probabilities and logits margins), loading (the model and tokenizer).
"""

from sage_agent.chat.model import ChatSage

__all__ = ["ChatSage"]
