"""Answers worked in steps for BIG-Bench Hard's tasks of rules applied in turn
(``TaskFamily.in_steps``): web_of_lies, boolean_expressions, multistep_arithmetic_two.

A 135M model asked for the label or number alone has to do the whole task in one token;
written in steps, each step applies one local rule to what the step before wrote. A
label comes last, and the steps never name a label, so the family's judge (the first
label of the answer) reads the last one; a number comes after the last "=". Each writer
checks its own work against the target: an answer in steps is never a wrong one.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable

from sage_agent.scoring.numeric import format_number
from sage_agent.scoring.verifier import (
    MAX_DEPTH,
    MAX_LENGTH,
    ExpressionError,
    evaluate_expression,
)

_CHAIN = re.compile(
    r"(\w+) (tells the truth|lies)\.((?: \w+ says \w+ (?:tells the truth|lies)\.)+) "
    r"Does (\w+) tell the truth\?"
)
_CLAIM = re.compile(r"(\w+) says (\w+) (tells the truth|lies)\.")
_BOOLEAN = re.compile(r"^([()\sa-zA-Z]+?)\s+is\s*$", re.MULTILINE)
_LITERALS = {True: "T", False: "F"}
_ARITHMETIC = re.compile(r"^([-+*()\d\s]+?)\s*=\s*$", re.MULTILINE)
_OPERATIONS: dict[type, tuple[str, int, Callable[[int, int], int]]] = {
    ast.Add: ("+", 1, operator.add),
    ast.Sub: ("-", 1, operator.sub),
    ast.Mult: ("*", 2, operator.mul),
}


def truth_in_steps(prompt: str, target: str) -> str | None:
    """A web of lies worked speaker by speaker: ``Sherrie lies, Vernell truth, Alexis
    lies. No``: each speaker's truth follows from the one before and what the speaker
    says of them. None when the prompt is not such a chain or its last speaker's truth
    is not ``target``."""
    found = _CHAIN.search(prompt)
    if found is None:
        return None
    truth = {found.group(1): found.group(2) == "tells the truth"}
    for speaker, about, claim in _CLAIM.findall(found.group(3)):
        if about not in truth:
            return None
        truth[speaker] = truth[about] == (claim == "tells the truth")
    asked = found.group(4)
    if asked not in truth or ("Yes" if truth[asked] else "No") != target.strip():
        return None
    steps = ", ".join(f"{name} {'truth' if t else 'lies'}" for name, t in truth.items())
    return f"{steps}. {target.strip()}"


def boolean_in_steps(prompt: str, target: str) -> str | None:
    """A boolean expression reduced a layer at a time, True and False written T and F
    (so no step names a label): ``not ( True ) and ( True ) is`` -> ``not T and T = F and
    T = F. False``. Each step computes every operation whose operands are already
    values. None when the prompt holds no such expression or it is not ``target``."""
    found = _BOOLEAN.search(prompt)
    if found is None or len(found.group(1)) > MAX_LENGTH:  # the verifier's bound
        return None
    try:
        tree = ast.parse(found.group(1).strip(), mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        return None
    if _depth(tree) > MAX_DEPTH or not _is_boolean(tree):
        return None
    chain = [_written(tree)]
    while not isinstance(tree, ast.Constant):
        tree = _reduce_layer(tree)
        chain.append(_written(tree))
    assert isinstance(tree, ast.Constant)
    if str(tree.value) != target.strip():
        return None
    return " = ".join(chain) + f". {target.strip()}"


def _depth(node: ast.expr) -> int:
    """How deep the tree nests, counted without recursing (a long run of "not"s would
    overflow the stack of the functions that walk it)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(current)]
    return deepest


def _is_boolean(node: ast.expr) -> bool:
    """Only True, False, not, and, or: nothing else is read, let alone evaluated."""
    if isinstance(node, ast.Constant):
        return type(node.value) is bool
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.Not) and _is_boolean(node.operand)
    if isinstance(node, ast.BoolOp):
        return all(_is_boolean(v) for v in node.values)
    return False


def _reduce_layer(node: ast.expr) -> ast.expr:
    """``node`` with every operation whose operands are all values replaced by its value
    (a run of "not"s before a value counts as one operation)."""
    if isinstance(node, ast.Constant):
        return node
    if isinstance(node, ast.UnaryOp):
        nots, inner = _nots(node)
        if isinstance(inner, ast.Constant):
            return ast.Constant(inner.value ^ (nots % 2 == 1))
        return ast.UnaryOp(node.op, _reduce_layer(node.operand))
    assert isinstance(node, ast.BoolOp)
    if all(isinstance(v, ast.Constant) for v in node.values):
        values = [v.value for v in node.values]  # type: ignore[attr-defined]
        return ast.Constant(all(values) if isinstance(node.op, ast.And) else any(values))
    return ast.BoolOp(node.op, [_reduce_layer(v) for v in node.values])


def _nots(node: ast.expr) -> tuple[int, ast.expr]:
    """How many "not"s lead ``node``, and what they apply to."""
    count = 0
    while isinstance(node, ast.UnaryOp):
        count, node = count + 1, node.operand
    return count, node


_PRECEDENCE = {ast.Or: 1, ast.And: 2}


def _written(node: ast.expr, outer: int = 0) -> str:
    """The expression with its values as T and F and only the parentheses precedence
    needs (or < and < not)."""
    if isinstance(node, ast.Constant):
        return _LITERALS[node.value]
    if isinstance(node, ast.UnaryOp):
        return "not " + _written(node.operand, 3)
    assert isinstance(node, ast.BoolOp)
    own = _PRECEDENCE[type(node.op)]
    word = " and " if own == 2 else " or "
    text = word.join(_written(v, own + 1) for v in node.values)
    return f"({text})" if own < outer else text


def arithmetic_in_steps(prompt: str, target: str) -> str | None:
    """An expression of whole numbers reduced a layer at a time, the way BIG-Bench Hard
    writes it: ``((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) =`` -> ``1 + 45 - (-6 + 28) =
    46 - 22 = 24`` (the number after the last "=" is the answer). The verifier reads
    the expression first, so nothing it refuses is reduced. None when the prompt holds no
    such expression or its value is not ``target``."""
    found = _ARITHMETIC.search(prompt)
    if found is None:
        return None
    try:
        value = evaluate_expression(found.group(1))
        tree = ast.parse(found.group(1).strip(), mode="eval").body
    except (ExpressionError, SyntaxError):
        return None
    if format_number(value) != target.strip() or not _is_whole_arithmetic(tree):
        return None
    chain = []
    while _value(tree) is None:
        tree = _reduce_arithmetic(tree)
        chain.append(_arithmetic_written(tree))
    return " = ".join(chain) or None


def _value(node: ast.expr) -> int | None:
    """The node's value when it is a whole number, negative ones included."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _value(node.operand)
        return None if inner is None or not isinstance(node.operand, ast.Constant) else -inner
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _is_whole_arithmetic(node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp):
        return type(node.op) in _OPERATIONS and all(
            _is_whole_arithmetic(n) for n in (node.left, node.right)
        )
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub) and _is_whole_arithmetic(node.operand)
    return _value(node) is not None


def _reduce_arithmetic(node: ast.expr) -> ast.expr:
    """``node`` with every operation on two numbers replaced by its value."""
    if _value(node) is not None:
        return node
    if isinstance(node, ast.UnaryOp):
        inner = _value(node.operand)  # "- -5": a minus of a negative number is one step
        if inner is not None:
            return ast.Constant(-inner)
        return ast.UnaryOp(node.op, _reduce_arithmetic(node.operand))
    assert isinstance(node, ast.BinOp)
    left, right = _value(node.left), _value(node.right)
    if left is not None and right is not None:
        return ast.Constant(_OPERATIONS[type(node.op)][2](left, right))
    return ast.BinOp(_reduce_arithmetic(node.left), node.op, _reduce_arithmetic(node.right))


def _arithmetic_written(node: ast.expr, outer: int = 0, right: bool = False) -> str:
    """The expression with spaces around its operators and only the parentheses its
    precedence needs (the right operand of a "-" keeps them at equal precedence)."""
    value = _value(node)
    if value is not None:
        return str(value)
    if isinstance(node, ast.UnaryOp):
        return f"-({_arithmetic_written(node.operand)})"
    assert isinstance(node, ast.BinOp)
    sign, own, _ = _OPERATIONS[type(node.op)]
    left = _arithmetic_written(node.left, own)
    text = f"{left} {sign} {_arithmetic_written(node.right, own, right=sign == '-')}"
    return f"({text})" if own < outer or (right and own == outer) else text
