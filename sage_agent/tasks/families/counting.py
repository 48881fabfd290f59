"""BIG-Bench Hard's object_counting: inventories made with exact counts, and a count
written in steps.

A 135M model asked for the number alone has to pick the category's items, read their
number words and add them up in one token; written in steps (``counted_in_steps``), each
item adds its number to a running total: ``flute 1, pianos 3, violin 4``. The vocabulary is the
task's own (five categories; "objects" counts every item, as BBH's "objects" questions
list household objects only).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

CATEGORIES = {
    "musical instruments": [
        "flute",
        "piano",
        "trombone",
        "violin",
        "accordion",
        "clarinet",
        "drum",
        "trumpet",
    ],
    "fruits": [
        "apple",
        "banana",
        "strawberry",
        "peach",
        "orange",
        "plum",
        "raspberry",
        "grape",
        "nectarine",
        "blackberry",
    ],
    "vegetables": [
        "carrot",
        "onion",
        "potato",
        "cabbage",
        "yam",
        "lettuce head",
        "garlic",
        "cauliflower",
        "head of broccoli",
        "stalk of celery",
    ],
    "animals": [
        "cat",
        "dog",
        "rabbit",
        "goat",
        "pig",
        "cow",
        "donkey",
        "snake",
        "frog",
        "mouse",
        "bear",
        "chicken",
        "duck",
        "fish",
        "snail",
    ],
    "objects": [
        "bed",
        "car",
        "chair",
        "couch",
        "table",
        "lamp",
        "microwave",
        "oven",
        "stove",
        "toaster",
        "fridge",
    ],
}
ALL_ITEMS = "objects"
"""The category that counts every item of an inventory."""
_NUMBER_WORDS = ("a", "two", "three", "four", "five")
_COUNTS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_IRREGULAR = {
    "mouse": "mice",
    "fish": "fish",
    "potato": "potatoes",
    "head of broccoli": "heads of broccoli",
    "stalk of celery": "stalks of celery",
}
_INVENTORY = re.compile(r"I have (.+?)\. How many (.+?) do I have\?")
_ITEM_SEPARATOR = re.compile(r",\s*(?:and\s+)?|\s+and\s+")


def plural(word: str) -> str:
    """``peach`` -> ``peaches``, ``strawberry`` -> ``strawberries``, ``mouse`` -> ``mice``."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("sh", "ch")) else "s")


_CATEGORY_OF = {
    form: c for c, words in CATEGORIES.items() for w in words for form in (w, plural(w))
}


def object_counting(rng: random.Random, _sources: Sequence[str]) -> tuple[str, str]:
    """ "I have a flute, two lamps, ... How many musical instruments do I have?": two or
    more of the category's items, mostly one of each; an "objects" inventory holds
    objects only, another mixes in up to three other items."""
    category = rng.choice(list(CATEGORIES))
    wanted = rng.sample(CATEGORIES[category], rng.randint(2, len(CATEGORIES[category])))
    others = [w for c, ws in CATEGORIES.items() if c != category for w in ws]
    distractors = [] if category == ALL_ITEMS else rng.sample(others, rng.randint(0, 3))
    # Mostly one of each, as BBH's inventories are.
    items = [(w, 1 if rng.random() < 0.75 else rng.randint(2, 5)) for w in wanted + distractors]
    rng.shuffle(items)
    total = sum(n for w, n in items if w in wanted)
    phrases = [_counted(w, n) for w, n in items]
    listed = ", ".join(phrases[:-1]) + f", and {phrases[-1]}" if len(phrases) > 1 else phrases[0]
    return f"I have {listed}. How many {category} do I have?", str(total)


def counted_in_steps(prompt: str, target: str) -> str | None:
    """The count of an inventory written item by item with a running total, in the
    inventory's order: ``flute 1, pianos 3, violin 4`` (the last number is the answer, as
    ``numeric.parse_number`` reads it). None when the prompt is not
    an inventory, names an item or category not in the vocabulary, or counts to other
    than ``target``: an answer written in steps is never a wrong one."""
    found = _INVENTORY.search(prompt)
    if found is None or found.group(2) not in CATEGORIES:
        return None
    category, steps, total = found.group(2), [], 0
    for phrase in _ITEM_SEPARATOR.split(found.group(1)):
        number, _, item = phrase.strip().partition(" ")
        count = _COUNTS.get(number.lower())
        if count is None or item not in _CATEGORY_OF:
            return None
        if category != ALL_ITEMS and _CATEGORY_OF[item] != category:
            continue
        total += count
        steps.append(f"{item} {total}")
    return ", ".join(steps) if steps and str(total) == target.strip() else None


def _counted(word: str, n: int) -> str:
    if n == 1:
        return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
    return f"{_NUMBER_WORDS[n - 1]} {plural(word)}"
