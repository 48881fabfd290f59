"""bench_adapt's report: seeds saved one at a time and merged, the tables and the plots."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import numpy as np
from common import cpu_features
from scipy.stats import wilcoxon

from sage_agent.scoring.labels import label_metrics
from sage_agent.scoring.numeric import math_metrics
from sage_agent.tasks.families import ARITHMETIC, family_named

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from adapt_methods import (
    METHODS,
    OPERATORS,
    MethodResult,
    SeedResult,
    Settings,
    atoms_of,
    share_right,
    split_problems,
)

matplotlib.use("Agg")


def settings_key(settings: Settings) -> dict:
    """What must match for seeds to share a table: every setting but the database lock
    timeouts, which change no figure."""
    return {
        "stream": settings.stream,
        "heldout": settings.heldout,
        "search_seconds": settings.search_seconds,
        "adapt_seconds": settings.adapt_seconds,
        "max_clusters": settings.max_clusters,
        "store": _without_lock_timeout(repr(settings.store)),
        "buffer": _without_lock_timeout(repr(settings.buffer)),
    }


def _without_lock_timeout(text: str) -> str:
    return re.sub(r", lock_timeout=[0-9.e+-]+", "", text)


def save_seed(folder: Path, result: SeedResult, settings: Settings) -> None:
    """Write one seed's results beside the report, so seeds run one command at a time
    merge into one table."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"settings": settings_key(settings), "result": asdict(result)}
    (folder / f"seed-{result.seed}.json").write_text(json.dumps(data, indent=1, default=str))


def load_seeds(folder: Path, settings: Settings) -> list[SeedResult]:
    """Every saved seed run with these settings, by seed (others are named and left out)."""
    results = []
    for path in sorted(folder.glob("seed-*.json")):
        data = json.loads(path.read_text())
        saved = {
            k: _without_lock_timeout(v) if isinstance(v, str) else v
            for k, v in data["settings"].items()
        }
        if saved != settings_key(settings):
            print(f"{path.name}: other settings, left out of the tables")
            continue
        methods = {k: MethodResult(**v) for k, v in data["result"].pop("methods").items()}
        results.append(SeedResult(**data["result"], methods=methods))
    return sorted(results, key=lambda r: r.seed)


def mean_spread(values: Sequence[float | None], digits: int = 3) -> str:
    """Mean ± standard deviation over the seeds that have a value ("-": none has)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def atomic_table(results: Sequence[SeedResult]) -> list[str]:
    if results and results[0].family != ARITHMETIC.name:
        return label_table(results)

    def cells(runs: Sequence[MethodResult]) -> str:
        metrics = [
            math_metrics(m.answers, r.references) for m, r in zip(runs, results, strict=True)
        ]
        return (
            f"{mean_spread([m.em for m in metrics])} "
            f"| {mean_spread([m.mae or 0.0 for m in metrics])} "
            f"| {np.mean([m.mse or 0.0 for m in metrics]):.3g} "
            f"| {mean_spread([m.ner for m in metrics])}"
        )

    return _method_rows(results, "EM | MAE | MSE | NER", "routed steps", cells)


def label_table(results: Sequence[SeedResult]) -> list[str]:
    """The paper's Table 1 columns for a task family's items: accuracy and macro
    precision / recall / F1 over the labels (``scoring.labels``), per method."""
    family = family_named(results[0].family)

    def cells(runs: Sequence[MethodResult]) -> str:
        metrics = [
            label_metrics(family, m.answers, r.references)
            for m, r in zip(runs, results, strict=True)
        ]
        macro = [
            mean_spread([getattr(m, k) for m in metrics])
            if metrics[0].macro_f1 is not None
            else "-"
            for k in ("macro_precision", "macro_recall", "macro_f1")
        ]
        return (
            f"{mean_spread([m.accuracy for m in metrics])} | {' | '.join(macro)} "
            f"| {mean_spread([m.answered for m in metrics])}"
        )

    return _method_rows(
        results, "accuracy | macro P | macro R | macro F1 | answered", "routed items", cells
    )


def _method_rows(
    results: Sequence[SeedResult],
    scores: str,
    routed: str,
    cells: Callable[[Sequence[MethodResult]], str],
) -> list[str]:
    """A row per method: ``cells`` of its runs (one per seed; the columns ``scores``
    names), then what it kept and fixed of the base model's answers and its cost."""
    columns = [*scores.split(" | "), "EM where base right", "EM where base wrong"]
    columns += ["adapters", "training s", routed]
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    base_right = [np.array(r.methods["Base"].right, dtype=bool) for r in results]
    for name in METHODS:
        runs = [r.methods[name] for r in results if name in r.methods]
        if not runs:
            continue
        kept = [share_right(m.right, b) for m, b in zip(runs, base_right, strict=True)]
        fixed = [share_right(m.right, ~b) for m, b in zip(runs, base_right, strict=True)]
        lines.append(
            f"| {name} | {cells(runs)} "
            f"| {mean_spread(kept)} | {mean_spread(fixed)} "
            f"| {np.mean([m.adapters for m in runs]):.1f} "
            f"| {np.mean([m.train_seconds for m in runs]):.0f} "
            f"| {np.mean([m.routed for m in runs]):.1f} |"
        )
    return lines


def confusion_tables(results: Sequence[SeedResult]) -> list[str]:
    """The confusion of labels of the base model and of SAGE, all seeds pooled: whether a
    method's gain is more than answering the majority label."""
    family = family_named(results[0].family)
    if family.kind not in ("label", "choice"):
        return []
    lines = []
    for name in ("Base", "SAGE"):
        if not all(name in r.methods for r in results):
            continue
        answers = [a for r in results for a in r.methods[name].answers]
        references = [x for r in results for x in r.references]
        metrics = label_metrics(family, answers, references)
        lines += [
            f"{name}, all seeds (rows: the reference; columns: the label answered):",
            "",
            "| reference | " + " | ".join(metrics.columns) + " |",
            "|---" * (len(metrics.columns) + 1) + "|",
            *(
                f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                for label, row in zip(metrics.labels, metrics.confusion, strict=True)
            ),
            "",
        ]
    return lines


def heldout_tags(path: Path, result: SeedResult, settings: Settings) -> list[str] | None:
    """The operator signature of each held-out step of ``result``'s seed, rebuilt from the
    data (the same seeded split); None when the data gives other steps than the run had."""
    _, heldout = split_problems(path, result.seed, settings.stream, settings.heldout)
    atoms = atoms_of(heldout)
    if [a.reference for a in atoms] != result.references:
        return None
    return [a.tag for a in atoms]


def methods_in_every_seed(results: Sequence[SeedResult]) -> list[str]:
    """The methods every seed ran, in the tables' order (a seed may stop after some)."""
    return [n for n in METHODS if all(n in r.methods for r in results)]


def operator_table(results: Sequence[SeedResult], tags: Sequence[Sequence[str]]) -> list[str]:
    """Right held-out steps per operator signature, summed over the seeds: where each
    method's exact match comes from (one-operator signatures; the rest pooled)."""
    names = methods_in_every_seed(results)
    pooled = [[t if t in OPERATORS else "other" for t in seed_tags] for seed_tags in tags]
    lines = [
        "| operator | steps | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for operator in (*OPERATORS, "other"):
        steps = sum(t.count(operator) for t in pooled)
        if not steps:
            continue
        right = [
            sum(
                ok
                for r, seed_tags in zip(results, pooled, strict=True)
                for ok, t in zip(r.methods[name].right, seed_tags, strict=True)
                if t == operator
            )
            for name in names
        ]
        lines.append(f"| `{operator}` | {steps} | " + " | ".join(map(str, right)) + " |")
    return lines


def change_table(results: Sequence[SeedResult]) -> list[str]:
    """What each method did with the held-out steps, summed over the seeds: of the steps
    the base model answers wrong, how many it left with the base answer (no adapter
    routed, or the gate kept it), changed to another wrong answer, or fixed; of those it
    answers right, how many it lost. Separates reach (routing) from what adapters fix."""
    names = [n for n in methods_in_every_seed(results) if n != "Base"]
    lines = [
        "| method | base wrong | left as the base answered | changed, still wrong | fixed "
        "| base right | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        wrong = left = fixed = right = lost = 0
        for r in results:
            base, method = r.methods["Base"], r.methods[name]
            for ok, answer, base_ok, base_answer in zip(
                method.right, method.answers, base.right, base.answers, strict=True
            ):
                if base_ok:
                    right += 1
                    lost += not ok
                else:
                    wrong += 1
                    fixed += ok
                    left += answer == base_answer
        lines.append(
            f"| {name} | {wrong} | {left} | {wrong - left - fixed} | {fixed} | {right} | {lost} |"
        )
    return lines


def wilcoxon_line(results: Sequence[SeedResult]) -> str:
    """Signed-rank test on the held-out steps, SAGE against the base model, all seeds
    pooled (per step: right = 1, wrong = 0; steps where both agree drop out)."""
    base = [x for r in results for x in r.methods["Base"].right]
    sage = [x for r in results for x in r.methods["SAGE"].right]
    pairs = list(zip(sage, base, strict=True))
    differing = sum(s != b for s, b in pairs)
    if differing == 0:
        return "Wilcoxon signed-rank, SAGE vs base: no held-out step differs, no test."
    test = wilcoxon(np.array(sage, float), np.array(base, float), zero_method="wilcox")
    return (
        f"Wilcoxon signed-rank, SAGE vs base over {len(base)} held-out steps "
        f"({differing} differ; SAGE right on {sum(s > b for s, b in pairs)}, "
        f"base on {sum(b > s for s, b in pairs)}): "
        f"statistic {test.statistic:.1f}, p = {test.pvalue:.3g}."
    )


def plots(results: Sequence[SeedResult], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = methods_in_every_seed(results)
    ems = [[np.mean(r.methods[n].right) for r in results] for n in names]
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.bar(range(len(names)), [np.mean(e) for e in ems], yerr=[np.std(e) for e in ems])
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("held-out step EM")
    figure.tight_layout()
    figure.savefig(folder / "atomic_em.png", dpi=110)
    plt.close(figure)
    made = ["atomic_em.png"]

    trigger = next((r.trigger for r in results if r.trigger), None)
    if trigger:
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        fpr, tpr = trigger["roc"]
        left.plot(fpr, tpr, label=f"anomaly score (AUC {trigger['anomaly_auc']:.2f})")
        left.plot([0, 1], [0, 1], ls=":", c="grey")
        left.set_xlabel("false positive rate")
        left.set_ylabel("true positive rate")
        left.legend(fontsize=8)
        sweep = trigger["threshold_sweep"]
        right.plot([s["threshold"] for s in sweep], [s["fpr"] for s in sweep], label="FPR")
        right.plot([s["threshold"] for s in sweep], [s["tpr"] for s in sweep], label="TPR")
        right.set_xlabel("anomaly threshold")
        right.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(folder / "trigger.png", dpi=110)
        plt.close(figure)
        made.append("trigger.png")
    return made


def report(
    results: Sequence[SeedResult],
    settings: Settings,
    out: Path,
    tags: Sequence[Sequence[str]] | None = None,
) -> str:
    seeds = ", ".join(str(r.seed) for r in results)
    commands = sorted({r.command for r in results})
    seconds = sum(r.seconds for r in results)
    machine = f"{os.cpu_count()} CPU cores ({cpu_features()})"
    made = plots(results, out.with_suffix(""))
    lines = [
        "# Does it adapt?",
        "",
        "Commands (one per seed, merged):" if len(commands) > 1 else "Command:",
        "",
        *(f"    {c}" for c in commands),
        "",
        f"Machine: {machine}; {seconds / 60:.0f} minutes in all. Model: the embedded "
        f"SmolLM2-135M-Instruct; embedder: all-MiniLM-L6-v2. Seeds: {seeds}. Per seed "
        f"{settings.stream} {_items(results)} streamed, {settings.heldout} held out (disjoint); "
        f"means ± standard deviation over the seeds. What each method is and how it is "
        f"scored: the docstring of `benchmarks/bench_adapt.py`.",
        "",
        "## Atomic steps (references substituted)",
        "",
        f"Stream steps per seed: {mean_spread([r.stream_atoms for r in results], 0)} "
        f"({mean_spread([r.failures for r in results], 0)} answered wrong by the base "
        f"model); held-out steps: {mean_spread([len(r.references) for r in results], 0)}.",
        "",
        *atomic_table(results),
        "",
        wilcoxon_line(results),
        "",
        f"![held-out step EM]({out.stem}/atomic_em.png)",
        "",
        *confusion_tables(results),
        "Held-out steps each method changed, all seeds (an answer the same as the base "
        "model's was not routed to an adapter, kept by the gate, or answered alike):",
        "",
        *change_table(results),
        "",
        *(
            [
                "Right held-out steps per operator, all seeds (a step's operator signature "
                "from its calculator annotation; `other`: two operators or none):",
                "",
                *operator_table(results, tags),
                "",
            ]
            if tags is not None and results[0].family == ARITHMETIC.name
            else []
        ),
        "## Problems (the model's own earlier answers, at most three steps)",
        "",
        "| method | final-answer EM | problems |",
        "|---|---|---|",
    ]
    for name in ("Base", "SAGE"):
        values = [r.problem_em[name] for r in results if name in r.problem_em]
        if values:
            lines.append(
                f"| {name} | {mean_spread(values)} "
                f"| {mean_spread([r.problems_scored for r in results], 0)} |"
            )
    lines += ["", "## SAGE on the stream", "", "| seed | " + " | ".join(SUMMARY_KEYS) + " |"]
    lines.append("|---" * (len(SUMMARY_KEYS) + 1) + "|")
    for r in results:
        lines.append(
            f"| {r.seed} | " + " | ".join(_cell(r.sage_summary.get(k)) for k in SUMMARY_KEYS) + " |"
        )
    lines += ["", "## Trigger: right vs wrong base answers on the held-out steps", ""]
    for r in results:
        if not r.trigger:
            continue
        t = r.trigger
        lines += [
            f"Seed {r.seed}: {t['n_in']} right (in-distribution), {t['n_out']} wrong "
            f"(out-of-distribution); anomaly-score AUC {t['anomaly_auc']:.3f}.",
            "",
            "| metric | AUC | false positive rate at 0.5 |",
            "|---|---|---|",
            *(f"| {m} | {v['auc']:.3f} | {v['fpr']:.3f} |" for m, v in t["metrics"].items()),
            "",
            "Weight sweep (weight of the logits margin, the rest shared equally): "
            + ", ".join(f"{s['lm_weight']}: AUC {s['auc']:.3f}" for s in t["weight_sweep"])
            + ".",
            "",
        ]
    if "trigger.png" in made:
        lines += [f"![trigger ROC and threshold sweep]({out.stem}/trigger.png)", ""]
    lines += [
        "## Retention: SAGE adapters on held-out steps the base model answers right",
        "",
        "Each adapter on all of its tag's held-out steps that the base model answers right, "
        "and as routing uses it: only on the steps whose base answer is unsure "
        "(`RouterConfig.route_below`), the others keeping their right base answer.",
        "",
        "| seed | adapter | tag | steps | EM, every step (base 1.000) | unsure steps "
        "| EM, as routed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines += [
            f"| {r.seed} | {x['adapter']} | `{x['tag']}` | {x['passes']} | {x['em']:.3f} "
            f"| {x['unsure']} | {x['em_gated']:.3f} |"
            for x in r.retention
        ]
    return "\n".join(lines) + "\n"


SUMMARY_KEYS = (
    "steps",
    "step_em_first",
    "step_em",
    "triggers",
    "clusters",
    "adapters_trained",
    "retry_success",
    "adapt_s",
    "wall_s",
)


def _cell(value: object) -> str:
    """Rates to three decimals, seconds as whole numbers (not 1.07e+03)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3f}"


def _items(results: Sequence[SeedResult]) -> str:
    family = results[0].family if results else ARITHMETIC.name
    return "GSM8K problems" if family == ARITHMETIC.name else f"{family} items"
