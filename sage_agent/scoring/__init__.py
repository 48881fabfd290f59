"""Scoring answers: the Trigger (pass / fail), the arithmetic verifier (references), and
numbers in answers (parsing, matching, the math metrics)."""
