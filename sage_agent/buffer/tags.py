"""Structure tags and keywords of failed samples.

A sample's tag (the operator signature of its expression) decides which buffer it waits
in; its keywords enter gamma, the score that decides whether it joins a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sage_agent.tasks.steps import operator_signature

Tagger = Callable[[str, dict[str, Any] | None], str]
"""Maps a sample's text and payload to its structure tag."""

_EXPRESSION = re.compile(r"\(?\$?\d[\d.,]*\)?(?:\s*(?:\*\*|[-+*/%×÷−])\s*\(?\$?\d[\d.,]*\)?)+")


def first_expression(text: str) -> str | None:
    """The first arithmetic expression written in ``text`` ("2+7" in "Compute 2+7."),
    or None when there is none."""
    match = _EXPRESSION.search(text)
    return match.group(0) if match else None


def default_tag(text: str, payload: dict[str, Any] | None = None) -> str:
    """The operator signature of the step's expression (``payload["expression"]``, else the
    first arithmetic expression in the text), or "default" when there is none."""
    expression = (payload or {}).get("expression")
    if not isinstance(expression, str) or not expression.strip():
        expression = first_expression(text) or ""
    return operator_signature(expression) or "default"


_TOKEN = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*|\*\*|[-+*/%×÷−]")
_STOPWORDS = frozenset(
    (  # noqa: SIM905 - a word list reads best as one string
        "a an and are as at be by did do does for from had has have he her his how in is it "
        "its many much of on or reply she so than that the their them then there they this to "
        "was what when which who will with only number"
    ).split()
)


def keywords(text: str) -> frozenset[str]:
    """Content words (lowercase, no stop words), operators, and "<num>" for any number, so
    "3 apples" and "7 apples" share all their keywords."""
    found = set()
    for token in _TOKEN.findall(text.lower()):
        if token[0].isdigit():
            found.add("<num>")
        elif token.isalpha():
            if len(token) > 1 and token not in _STOPWORDS:
                found.add(token)
        else:
            found.add(operator_signature(f"1{token}1"))
    return frozenset(found)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def cluster_keywords(counts: dict[str, int], size: int) -> frozenset[str]:
    """A cluster's keywords: those held by at least half of its members."""
    return frozenset(k for k, n in counts.items() if 2 * n >= size)
