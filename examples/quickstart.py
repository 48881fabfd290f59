"""Quick start: the embedded model as a LangChain chat model, and the Trigger.

python examples/quickstart.py
"""

from sage_agent import ChatSage, Trigger, arithmetic_verifier, math_metrics

chat = ChatSage(max_tokens=16)  # the embedded SmolLM2-135M-Instruct; loads on first use
answer = chat.invoke("Compute 4*6. Reply with the number only.")
print(answer.content)
print("mean logits margin:", answer.response_metadata["logits_margin_mean"])
print("first token:", answer.response_metadata["logprobs"]["content"][0])

# One batched forward for many prompts (left padding).
expressions = ["24-5", "100/4", "7+8", "12*12"]
answers = chat.batch([f"Compute {e}. Reply with the number only." for e in expressions])

# Score every answer; the verifier computes each reference from the expression.
trigger = Trigger(verifier=arithmetic_verifier)
results = trigger.score_batch(
    [a.text for a in answers],
    expressions=expressions,
    logits_margins=[a.response_metadata["logits_margin"] for a in answers],
)
for expression, a, r in zip(expressions, answers, results, strict=True):
    print(f"{expression:>6} -> {a.text!r:28} AS={r.anomaly_score:.2f} failed={r.failed}")
print(math_metrics([a.text for a in answers], [r.reference for r in results]))
