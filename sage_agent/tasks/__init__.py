"""Tasks and their steps: what a run reads and what the graph answers.

data (task files), steps (atomic steps and GSM8K's worked answers), decompose (task ->
steps), plans (plans as a model writes them), problems (seeded word problems).
"""
