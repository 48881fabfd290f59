"""Reference answers computed from a step's expression, by a safe AST walk (never eval)."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from sage_agent.errors import ExpressionError
from sage_agent.scoring.numeric import format_number

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
MAX_LENGTH = 1000
"""Longer expressions are refused before parsing (GSM8K's longest is under 100 chars)."""
MAX_DEPTH = 200
"""Deeper expression trees are refused, so the walk never exhausts the stack (a sum of n
numbers is n deep)."""
MAX_MAGNITUDE = 1e18
"""Larger intermediate values are refused, so no step can build a number of millions of
digits ((9**64)**64 is refused before it is computed)."""


def evaluate_expression(expression: str) -> float:
    """The value of an arithmetic expression: numbers, + - * / // %, parentheses, unary
    minus and plus, and ** with an exponent of at most ``MAX_EXPONENT`` in size.

    Thousands commas and "$" are removed first, the signs "×", "÷" and "−" are read
    as "*", "/" and "-", and a percent sign after a number that no number or parenthesis
    follows is a percentage ("60 * 25%" is 15; "17 % 5" stays a remainder). Anything
    else (names, calls, attributes), an expression longer than ``MAX_LENGTH`` or deeper
    than ``MAX_DEPTH``, and a value (or an intermediate one) beyond ``MAX_MAGNITUDE`` or
    not finite raise ExpressionError: it is the only error this function raises.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("empty expression")
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"expression of {len(expression)} characters (at most {MAX_LENGTH})")
    text = expression.replace("$", "").replace("×", "*").replace("−", "-").replace("÷", "/")
    text = _PERCENTAGE.sub(r"(\1/100)", _strip_thousands_commas(text))
    shown = expression if len(expression) <= 60 else expression[:57] + "..."
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"cannot parse {shown!r}: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError(f"cannot parse {shown!r}: nested too deeply") from None
    try:
        value = _walk(tree.body, 0)
    except ZeroDivisionError:
        raise ExpressionError(f"division by zero in {shown!r}") from None
    except OverflowError:
        raise ExpressionError(f"{shown!r} overflows") from None
    if isinstance(value, complex):
        raise ExpressionError(f"{shown!r} has no real value")
    return float(value)


_PERCENTAGE = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d(.])")
"""A number with a percent sign that is not a remainder's (nothing to divide by follows)."""


def _strip_thousands_commas(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def _walk(node: ast.AST, depth: int) -> float:
    if depth > MAX_DEPTH:
        raise ExpressionError(f"expression nested deeper than {MAX_DEPTH}")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left, depth + 1), _walk(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, depth + 1))
    raise ExpressionError(f"not plain arithmetic: {ast.unparse(node)[:60]!r}")


def _check_power(base: float, exponent: float) -> None:
    """Refuse a power before computing it when its size is out of bounds."""
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {exponent} is larger than {MAX_EXPONENT}")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > 18:
        raise ExpressionError(f"{base}**{exponent} is larger than {MAX_MAGNITUDE:g}")


def _bounded(value: float) -> float:
    if isinstance(value, complex):
        return value
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ExpressionError(f"a value beyond {MAX_MAGNITUDE:g} (or not finite)")
    return value


def arithmetic_verifier(expression: str) -> str:
    """The reference answer of an arithmetic step, formatted as a number ("24", "2.5")."""
    return format_number(evaluate_expression(expression))
