"""Reference answers computed from a step's expression, by a safe AST walk (never eval)."""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable

from sage_agent.errors import ExpressionError
from sage_agent.numeric import format_number

Verifier = Callable[[str], str]
"""A verifier maps a step's expression (or question) to its reference answer."""

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
MAX_EXPONENT = 64
"""Powers with a larger exponent are refused: 9**9**9 must not hang the process."""


def evaluate_expression(expression: str) -> float:
    """The value of an arithmetic expression: numbers, + - * / // %, parentheses, unary
    minus and plus, and ** with an exponent of at most ``MAX_EXPONENT`` in size.

    Thousands commas and "$" are removed first, and the signs "×", "÷" and "−" are read
    as "*", "/" and "-". Anything else (names, calls, attributes) raises ExpressionError.
    """
    if not expression or not expression.strip():
        raise ExpressionError("empty expression")
    text = expression.replace("$", "").replace("×", "*").replace("−", "-").replace("÷", "/")
    text = _strip_thousands_commas(text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"cannot parse {expression!r}: {err.msg}") from None
    try:
        value = _walk(tree.body)
    except ZeroDivisionError:
        raise ExpressionError(f"division by zero in {expression!r}") from None
    except OverflowError:
        raise ExpressionError(f"{expression!r} overflows") from None
    if isinstance(value, complex):
        raise ExpressionError(f"{expression!r} has no real value")
    return float(value)


def _strip_thousands_commas(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def _walk(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ExpressionError(f"exponent {right} is larger than {MAX_EXPONENT}")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand))
    raise ExpressionError(f"not plain arithmetic: {ast.unparse(node)!r}")


def arithmetic_verifier(expression: str) -> str:
    """The reference answer of an arithmetic step, formatted as a number ("24", "2.5")."""
    return format_number(evaluate_expression(expression))
