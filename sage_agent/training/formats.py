"""How a training answer is written: the result alone, the equation, or worked in steps.

Every format ends with the result after the last "=", where ``numeric.parse_number`` and
the Trigger read it. The worked format splits one computation into steps a small model
gets right, in the spirit of the scratchpads of Lee et al., "Teaching Arithmetic to Small
Transformers" (ICLR 2024): ``27*8=20*8+7*8=160+56=216``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

from sage_agent.scoring.numeric import format_number
from sage_agent.scoring.verifier import ExpressionError, evaluate_expression
from sage_agent.tasks.steps import spaced_expression

AnswerFormat = Callable[[str, str], str]
"""(expression, result) -> the answer text a model is trained to write."""

_PLAIN = re.compile(r"[\d+\-*/%(). ]+")
"""Expressions the worked format rewrites (no "$", commas or other signs)."""
MAX_WORKED_CHARACTERS = 30
"""Longer worked answers are written as the equation instead: every digit and sign is a
token, and a generated answer must fit ``steps.ANSWER_MAX_TOKENS`` (32). On GSM8K's
steps the cut applies to about 4% of them."""


def number_answer(expression: str, result: str) -> str:
    """The result alone: "77"."""
    return result


def equation_answer(expression: str, result: str) -> str:
    """The expression, then the result: "60 + 17 = 77", the way SmolLM2 answers an atomic
    step on its own (the Trigger reads the number after the last "=")."""
    return f"{spaced_expression(expression)} = {result}"


def worked_answer(expression: str, result: str) -> str:
    """The computation in steps, written without spaces (each space is a token of its own
    to SmolLM2's tokenizer):

    * one operation on two whole numbers splits the second by place value and takes one
      place at a time: ``238+417=638+17=648+7=655``, ``27*43=27*40+27*3=1080+81=1161``
      (a product splits the factor with fewer non-zero digits, unless it has one);
    * anything longer is reduced one operation at a time, innermost and leftmost first:
      ``16-3-4=13-4=9``, ``(5+3)*2=8*2=16``.

    Decimals, division and expressions this cannot read are written as the equation
    (compactly).
    """
    if not _PLAIN.fullmatch(expression):
        return equation_answer(expression, result)
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
        chain = _place_value_chain(tree) or _reduction_chain(tree)
    except (SyntaxError, ExpressionError, RecursionError):
        return equation_answer(expression, result)
    start = _compact(expression)
    chain = [start] + [link for link in chain if link != start]
    if chain[-1] != result:
        chain.append(result)
    worked = "=".join(chain)
    return worked if len(worked) <= MAX_WORKED_CHARACTERS else f"{chain[0]}={result}"


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "number": number_answer,
    "equation": equation_answer,
    "worked": worked_answer,
}


def _compact(expression: str) -> str:
    return "".join(expression.split())


def _whole(node: ast.expr) -> int | None:
    """The node's value when it is a non-negative whole number literal."""
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        return node.value
    return None


def _places(number: int) -> list[int]:
    """``417`` -> ``[400, 10, 7]``: the non-zero place values, largest first."""
    digits = str(number)
    return [int(d) * 10 ** (len(digits) - i - 1) for i, d in enumerate(digits) if d != "0"]


def _place_value_chain(tree: ast.expr) -> list[str] | None:
    """The steps of one +, - or * on two whole numbers, or None for anything else."""
    if not isinstance(tree, ast.BinOp):
        return None
    left, right = _whole(tree.left), _whole(tree.right)
    if left is None or right is None:
        return None
    if isinstance(tree.op, ast.Add | ast.Sub):
        sign = "+" if isinstance(tree.op, ast.Add) else "-"
        chain, total, rest = [], left, right
        for place in _places(right)[:-1]:
            total = total + place if sign == "+" else total - place
            rest -= place
            chain.append(f"{total}{sign}{rest}")
        return [*chain, format_number(total + rest if sign == "+" else total - rest)]
    if isinstance(tree.op, ast.Mult):
        # Split the factor with fewer non-zero digits, unless it has only one.
        split_left = 1 < len(_places(left)) <= len(_places(right)) or len(_places(right)) < 2
        split, other = (left, right) if split_left else (right, left)
        places = _places(split)
        if len(places) < 2:
            return None
        terms = [f"{p}*{other}" if split_left else f"{other}*{p}" for p in places]
        products = [other * place for place in places]
        chain = ["+".join(terms)]
        while len(products) > 1:
            chain.append("+".join(str(p) for p in products))
            products = [products[0] + products[1], *products[2:]]
        return [*chain, str(products[0])]
    return None


def _reduction_chain(tree: ast.expr) -> list[str]:
    """The expression after each operation is computed, innermost and leftmost first."""
    chain = []
    while isinstance(tree, ast.BinOp | ast.UnaryOp):
        tree = _reduce_one(tree)
        chain.append(_compact(ast.unparse(tree)))
    return chain


def _reduce_one(node: ast.expr) -> ast.expr:
    """``node`` with its first operation whose operands are numbers replaced by its value."""
    if isinstance(node, ast.BinOp):
        if not isinstance(node.left, ast.Constant):
            return ast.BinOp(_reduce_one(node.left), node.op, node.right)
        if not isinstance(node.right, ast.Constant):
            return ast.BinOp(node.left, node.op, _reduce_one(node.right))
    elif isinstance(node, ast.UnaryOp) and not isinstance(node.operand, ast.Constant):
        return ast.UnaryOp(node.op, _reduce_one(node.operand))
    value = evaluate_expression(ast.unparse(node))
    return ast.Constant(int(value) if value.is_integer() else float(format_number(value)))
