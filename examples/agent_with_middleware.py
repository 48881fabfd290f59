"""SAGE inside a LangChain agent: create_agent with SageMiddleware and the embedded ChatSage.

python examples/agent_with_middleware.py [--db agent.db] [--questions 6]

Each question is one agent turn. The middleware scores the answer against the verifier's
value of the expression, buffers failures and, once a cluster of them is ready (25
failures of one kind by default), trains adapters after the turn; later questions like
them are then answered with the best adapter when the base model is unsure.
"""

import argparse

from langchain.agents import create_agent

from sage_agent import ChatSage, SageMiddleware, build_context

parser = argparse.ArgumentParser()
parser.add_argument("--db", default="agent.db")
parser.add_argument("--questions", type=int, default=6)
args = parser.parse_args()

chat = ChatSage(max_tokens=32)
context = build_context(args.db, chat)
agent = create_agent(chat, tools=[], middleware=[SageMiddleware(context)])

for i in range(args.questions):
    question = f"Compute {17 + 9 * i}+{48 + 7 * i}. Reply with the number only."
    state = agent.invoke({"messages": [{"role": "user", "content": question}]})
    record = state["sage_records"][-1]
    verdict = {None: "not scored", True: "wrong", False: "right"}[record["failed"]]
    print(f"{question} -> {record['answer']!r} ({verdict}; reference {record['reference']})")
    for outcome in state.get("sage_trained") or []:
        print(f"  trained cluster {outcome['cluster_id']}: adapters {outcome['adapters']}")
print(f"{len(context.buffer.buffered())} failures waiting in the buffer of {args.db}")
