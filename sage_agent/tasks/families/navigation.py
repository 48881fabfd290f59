"""BIG-Bench Hard's navigate: walks made with exact labels, and a walk written in steps.

BBH's walks come in two kinds, about half each: "Always face forward" with every step
given a direction ("Take 3 steps left."), or bare steps taken the way the walker faces,
with turns between them ("Take 8 steps. Turn around. Take 8 steps."). A 135M model asked
for Yes or No alone has to add up the whole walk in one token; written in steps
(``walked_in_steps``), each move writes where the walker stands and each turn the way it
faces: ``0,-1; -9,-1; -6,-1. No``. The walker starts at 0,0 facing N (y grows forward).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

_HEADINGS = "NESW"  # clockwise: a right turn is one place on
_UNIT = {"N": (0, 1), "E": (1, 0), "S": (0, -1), "W": (-1, 0)}
_RELATIVE = {"forward": 0, "right": 1, "backward": 2, "left": 3}  # places clockwise
_TURNS = {"right": 1, "around": 2, "left": 3}
_QUESTION = "If you follow these instructions, do you return to the starting point?"
_INSTRUCTION = re.compile(
    # BBH's steps are 1 to 10; a longer number is no step (and int() refuses 4,300 digits)
    r"Always face forward|Take (\d{1,9}) steps?(?: (forward|backward|left|right))?"
    r"|Turn (left|right|around)"
)


def walked_in_steps(prompt: str, target: str) -> str | None:
    """The walk of a navigate prompt, a step per instruction: the position ``x,y`` after
    each move, ``face E`` after each turn, then the label (the walk closes exactly when
    the last position is 0,0). None when the prompt is not such a walk or its label is
    not ``target``: an answer written in steps is never a wrong one."""
    _, asked, rest = prompt.partition(_QUESTION)
    sentences = [s.strip() for s in rest.split("\n", 1)[0].split(".") if s.strip()]
    if not asked or not sentences:
        return None
    x, y, heading, steps = 0, 0, 0, []
    for sentence in sentences:
        found = _INSTRUCTION.fullmatch(sentence)
        if found is None:
            return None
        number, direction, turn = found.groups()
        if turn:
            heading = (heading + _TURNS[turn]) % 4
            steps.append(f"face {_HEADINGS[heading]}")
        elif number:
            x, y = _moved(x, y, heading + _RELATIVE.get(direction, 0), int(number))
            steps.append(f"{x},{y}")
    label = "Yes" if x == y == 0 else "No"
    if not steps or label != target.strip():
        return None
    return "; ".join(steps) + f". {label}"


def _moved(x: int, y: int, facing: int, n: int) -> tuple[int, int]:
    """Where ``n`` steps towards ``facing`` (places clockwise from N) lead from x,y."""
    dx, dy = _UNIT[_HEADINGS[facing % 4]]
    return x + dx * n, y + dy * n


def navigate(rng: random.Random, _sources: Sequence[str]) -> tuple[str, str]:
    """A walk of BBH's either kind, two to six moves, half of them closed: up to two
    more moves (and the turns before them) bring the walker back to 0,0."""
    facing_forward = rng.random() < 0.5
    instructions: list[str] = ["Always face forward"] if facing_forward else []
    x, y, heading = 0, 0, 0

    def move(places: int, n: int) -> None:
        nonlocal x, y
        if facing_forward:
            word = next(w for w, p in _RELATIVE.items() if p == places)
            instructions.append(f"Take {n} step{'s' * (n != 1)} {word}")
        else:
            turn(places)
            instructions.append(f"Take {n} step{'s' * (n != 1)}")
        x, y = _moved(x, y, places if facing_forward else heading, n)

    def turn(places: int) -> None:
        nonlocal heading
        if places % 4:
            word = next(w for w, p in _TURNS.items() if p == places % 4)
            instructions.append(f"Turn {word}")
            heading = (heading + places) % 4

    for _ in range(rng.randint(2, 6)):
        if facing_forward:
            move(rng.randrange(4), rng.randint(1, 10))
        else:
            move(rng.choice((0, 0, 1, 2, 3)), rng.randint(1, 10))
    if rng.random() < 0.5:  # close the walk: undo each axis's displacement
        for way, offset in (("E" if x < 0 else "W", abs(x)), ("N" if y < 0 else "S", abs(y))):
            if offset:
                wanted = _HEADINGS.index(way)
                move((wanted - (0 if facing_forward else heading)) % 4, offset)
    text = f"{_QUESTION} {'. '.join(instructions)}.\nOptions:\n- Yes\n- No"
    return text, "Yes" if x == y == 0 else "No"
