"""A plain question, planned by another chat model with LLMDecomposer.

python examples/custom_decomposer.py [--db plan.db]

The planner is any LangChain chat model; here a second ChatSage (a bigger local or hosted
model plans far better than the embedded 135M one, whose plans often fail to parse: the
thread then ends with the decomposer's error, which the trace shows).
"""

import argparse

from sage_agent import ChatSage, SageAgent
from sage_agent.tasks.decompose import LLMDecomposer

parser = argparse.ArgumentParser()
parser.add_argument("--db", default="plan.db")
parser.add_argument("--planner", default=None, help="a local model folder for the plans")
args = parser.parse_args()

planner = ChatSage(model=args.planner, max_tokens=96) if args.planner else ChatSage(max_tokens=96)
agent = SageAgent(args.db)
agent.configure(decomposer=LLMDecomposer(planner))
question = "Tom has 4 boxes of 6 pens and gives away 5 pens. How many pens are left?"
summary = agent.run([{"id": "pens", "question": question}], train=False)
result = agent.state(summary.threads[0])["result"]
print(f"{question}\n  answer: {result['answer']!r}, error: {result['error']}")
