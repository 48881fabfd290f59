"""The SAGE graph on your own tasks: stream its events, then read a thread back.

python examples/sage_graph.py [path/to/gsm8k_socratic.jsonl]

Without a file it runs 5 generated word problems. Adapters are trained only once a
cluster of failures is ready, so short runs mostly show answering, scoring and buffering.
"""

import sys

from sage_agent import SageAgent
from sage_agent.report import read_thread, render_table
from sage_agent.tasks.data import read_tasks
from sage_agent.tasks.problems import generate_problems

if len(sys.argv) > 1:
    tasks = read_tasks(sys.argv[1], limit=5)
else:
    tasks = [{**record, "id": f"gen-{i}"} for i, record in enumerate(generate_problems(5, 0))]

agent = SageAgent("example.db")  # the embedded SmolLM2-135M; adapters in example-adapters/

# One task through the graph, with its custom stream events.
config = {"configurable": {"thread_id": "example-1"}}
for event in agent.graph.stream(
    {"task": tasks[0]}, config, context=agent.context(), stream_mode="custom"
):
    print(event)
print(render_table(read_thread(agent, "example-1")))

# All of them as a run: one thread each, figures at the end.
summary = agent.run(tasks)
print(f"step EM {summary.step_em_first:.0%} first answers, {summary.step_em:.0%} after retries")
