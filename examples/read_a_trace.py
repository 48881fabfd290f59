"""Reading a thread back: its checkpoints, the path it took, its pages, and a replay
from one of its checkpoints.

python examples/read_a_trace.py [--db trace.db]
"""

import argparse
from pathlib import Path

from sage_agent import SageAgent
from sage_agent.report import read_thread, render_table, write_run_report
from sage_agent.tasks.problems import generate_problems

parser = argparse.ArgumentParser()
parser.add_argument("--db", default="trace.db")
args = parser.parse_args()

# The embedded model; every checkpoint kept, so that a finished thread can be replayed
# (by default a finished thread keeps its last one and the history of the others).
agent = SageAgent(args.db, keep_checkpoints=True)
task = {**generate_problems(1, seed=5)[0], "id": "traced"}
summary = agent.run([task], train=False)
thread = summary.threads[0]
trace = read_thread(agent, thread)
print(render_table(trace))  # one row per attempt with its node times, and the node path
print({t["node"]: round(t["seconds"], 3) for t in trace.timings[:4]}, "...")
out = Path(args.db).with_name(f"{Path(args.db).stem}-report.html")
report = write_run_report(agent, summary.run_id, out)
print(f"run report: {report} (and a page per thread beside it)")

config = {"configurable": {"thread_id": thread}}
history = list(agent.graph.get_state_history(config))  # newest first
print(f"{len(history)} checkpoints; the path: {[h.next for h in reversed(history)][:6]} ...")

# Time travel: from the checkpoint just before the first answer, run the thread again.
before = next(h for h in reversed(history) if h.next == ("answer",))
replayed = agent.graph.invoke(None, before.config, context=agent.context(train=False))
print(f"replayed from {before.config['configurable']['checkpoint_id']}: {replayed['answer']!r}")
