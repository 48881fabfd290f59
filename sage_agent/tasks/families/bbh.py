"""BIG-Bench Hard (Suzgun et al. 2022): ``{"input", "target"}`` items, one family per
task, judged by the task's answer form. Tasks whose items can be made with exact labels
carry a generator (``families.generated``); sports_understanding and date_understanding
have none."""

from __future__ import annotations

from typing import Any

import sage_agent.tasks.families.counting as counting
import sage_agent.tasks.families.generated as generated
import sage_agent.tasks.families.navigation as navigation
import sage_agent.tasks.families.worked as worked
from sage_agent.tasks.families.base import RuleTraining, TaskFamily


def input_target(record: dict[str, Any]) -> tuple[str, str]:
    """A BIG-Bench Hard line (and a user's own ``{"input", "target"}``)."""
    return record["input"], str(record["target"])


def _task(name: str, kind: Any, instruction: str, **more: Any) -> TaskFamily:
    return TaskFamily(f"bbh:{name}", kind, instruction, input_target, **more)


_YES_NO = ("Yes", "No")
BBH_FAMILIES = {
    family.name.removeprefix("bbh:"): family
    for family in (
        _task(
            "boolean_expressions",
            "label",
            "Answer True or False.",
            labels=("True", "False"),
            max_tokens=48,  # room for the expression reduced in steps: up to 40 tokens
            generator=generated.boolean_expression,
            in_steps=worked.boolean_in_steps,
            # bench_steps: 0.550 -> 0.775 after 1,024 samples at batch 16; batch 4 is no
            # better per second and wanders on the way.
            rule=RuleTraining(batch_size=16, samples=1024),
        ),
        _task(
            "object_counting",
            "number",
            "Reply with the number only.",
            max_tokens=80,  # room for the count in steps: up to 71 tokens
            generator=counting.object_counting,
            in_steps=counting.counted_in_steps,
        ),
        _task(
            "word_sorting",
            "text",
            "Reply with the sorted words only, separated by spaces.",
            max_tokens=96,
            generator=generated.word_sorting,
        ),
        _task(
            "navigate",
            "label",
            "Answer Yes or No.",
            labels=_YES_NO,
            max_tokens=64,  # room for the walk in steps: up to 52 tokens on BBH's items
            generator=navigation.navigate,
            in_steps=navigation.walked_in_steps,
        ),
        _task(
            "web_of_lies",
            "label",
            "Answer Yes or No.",
            labels=_YES_NO,
            max_tokens=40,  # room for the speakers worked in steps: about 25 tokens
            generator=generated.web_of_lies,
            in_steps=worked.truth_in_steps,
            # bench_steps: 0.525 -> 1.000 after 512 samples at batch 4 (batch 16: 0.575 at 512).
            rule=RuleTraining(batch_size=4, samples=512),
        ),
        _task(
            "sports_understanding",
            "label",
            "Answer yes or no.",
            labels=("yes", "no"),
            max_tokens=8,
        ),
        _task(
            "date_understanding",
            "choice",
            "Reply with the letter of the right option, such as (A).",
            max_tokens=12,
        ),
        _task(
            "multistep_arithmetic_two",
            "number",
            "Reply with the number only.",
            max_tokens=64,  # room for the expression reduced in steps: up to 55 tokens
            generator=generated.multistep_arithmetic,
            in_steps=worked.arithmetic_in_steps,
        ),
        _task(
            "dyck_languages",
            "text",
            "Reply with the closing brackets only, separated by spaces.",
            max_tokens=48,
            generator=generated.dyck_completion,
        ),
    )
}
"""The nine tasks beside the clone (../shared/data/bbh), by BBH's task name."""
