"""Accuracy and the paper's label metrics (macro precision / recall / F1, Table 1's
PubMedQA columns) of a task family's answers, with the confusion of labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sage_agent.errors import InvalidInput
from sage_agent.tasks.families import TaskFamily

NO_LABEL = "(none)"
"""The column of answers that name no label of the family."""


@dataclass(frozen=True)
class LabelMetrics:
    """accuracy: answers the family judges right; answered: answers that say something in
    the family's form (a label, a letter, a number: the extraction rate); the macro
    scores average the labels' (None for families without a label space: numbers, free
    text); ``confusion[i][j]`` counts items of reference ``labels[i]`` answered
    ``columns[j]``."""

    family: str
    accuracy: float
    answered: float
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    labels: list[str]
    columns: list[str]
    confusion: list[list[int]]
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def label_metrics(
    family: TaskFamily, answers: Sequence[str], references: Sequence[str]
) -> LabelMetrics:
    """The metrics of ``answers`` against ``references`` as ``family`` reads them."""
    if len(answers) != len(references) or not answers:
        raise InvalidInput(
            f"{len(answers)} answers and {len(references)} references: they must pair up, "
            "and there must be some"
        )
    right = sum(family.judge(a, r) for a, r in zip(answers, references, strict=True))
    accuracy = right / len(answers)
    answered = sum(family.answer_of(a) is not None for a in answers) / len(answers)
    if family.kind not in ("label", "choice"):
        return LabelMetrics(
            family.name, accuracy, answered, None, None, None, [], [], [], len(answers)
        )
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    gold = [family.answer_of(r) or NO_LABEL for r in references]
    labels = list(family.labels) or sorted(set(gold) - {NO_LABEL})
    said = [label if (label := family.answer_of(a)) in labels else NO_LABEL for a in answers]
    precision, recall, f1, _ = precision_recall_fscore_support(
        gold, said, labels=labels, average="macro", zero_division=0
    )
    columns = [*labels, NO_LABEL]
    matrix = confusion_matrix(gold, said, labels=columns)[: len(labels)]
    return LabelMetrics(
        family.name,
        accuracy,
        answered,
        float(precision),
        float(recall),
        float(f1),
        labels,
        columns,
        matrix.tolist(),
        len(answers),
    )
