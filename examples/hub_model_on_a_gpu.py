"""A bigger hub model on a GPU (documented, not run by the tests: this needs a GPU and the
model in the local Hugging Face cache, e.g. after `huggingface-cli download
Qwen/Qwen2.5-1.5B-Instruct`).

python examples/hub_model_on_a_gpu.py --model Qwen/Qwen2.5-1.5B-Instruct --data gsm8k.jsonl
"""

import argparse

from sage_agent import ChatSage, SageAgent
from sage_agent.tasks.data import read_tasks

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--db", default="gpu.db")
args = parser.parse_args()

chat = ChatSage(model=args.model, device="cuda", dtype="bfloat16", batch_size=32)
agent = SageAgent(args.db, chat)  # training runs on the model's device, in bf16 autocast
summary = agent.run(read_tasks(args.data, limit=100))
print(summary)
