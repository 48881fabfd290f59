"""LoRA training on the chat model's one base model.

trainer (``LoRARun``: training in pieces; saving in peft's format), batches (pairs as
token batches, the forward pass over their answers), validation (how good an adapter is),
augment (verifier-labelled variants), formats (how a training answer is written).
"""
