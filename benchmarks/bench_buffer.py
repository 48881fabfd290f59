"""Trigger Buffer benchmark: the paper's clustering ablation (its Figure 4a) and scale.

    python benchmarks/bench_buffer.py --data ../shared/data/gsm8k/train.jsonl [--atoms 2000]
        [--scale 1000,10000,50000] [--quick]

Each atom is the atomic-step prompt ("Compute 16-3-4. Reply with the number only."), the
text a failed sample carries. Ablation: GSM8K atoms, labelled by operator signature,
streamed through four variants of the same TriggerBuffer: HDBSCAN alone (one buffer,
every clustering kept), + stability check, + merge, and full SBC (operator tags, gamma
assignment, stability, merge). Scores
over the clustered atoms: homogeneity, completeness, ARI, NMI against the operator label,
mean cosine of members to their centroid, the spread of cluster sizes (coefficient of
variation) and the share of atoms clustered.

Scale: full SBC over 1k, 10k and 50k streamed atoms (GSM8K atoms cycled, embeddings
computed once beforehand, so the figures are the buffer's own cost): mean time per add()
in the last 1,000 adds before each mark, mean time per batch clustering, clusters so far.

Writes benchmarks/results/buffer.md and buffer_ablation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import numpy as np
from common import gsm8k_steps
from langchain_core.embeddings import Embeddings
from sklearn.metrics import (
    adjusted_rand_score,
    completeness_score,
    homogeneity_score,
    normalized_mutual_info_score,
)

from sage_agent import default_embeddings
from sage_agent.buffer import BufferConfig, TriggerBuffer
from sage_agent.tasks.steps import ATOMIC_PROMPT

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"
NEVER = 10**9  # a merge_min_clusters no tag reaches: merging off

VARIANTS = {
    "HDBSCAN alone": (
        False,
        BufferConfig(ari_threshold=-1, centroid_threshold=-1, merge_min_clusters=NEVER, tau=1.0),
    ),
    "+ stability check": (False, BufferConfig(merge_min_clusters=NEVER, tau=1.0)),
    "+ merge": (False, BufferConfig(tau=1.0)),
    "full SBC": (True, BufferConfig()),
}


class PrecomputedEmbeddings(Embeddings):
    """Looks vectors up: the benchmark times the buffer, not the embedder."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.vectors[text]


def load_atoms(path: Path, limit: int, seed: int) -> list[tuple[str, str]]:
    """(atomic-step prompt, operator signature) of the first ``limit`` steps that have an
    operator: a failure sample is the prompt the model failed on."""
    atoms = []
    for step in gsm8k_steps(path, seed):
        if step.tag != "default":
            atoms.append((ATOMIC_PROMPT.format(expression=step.expression), step.tag))
            if len(atoms) == limit:
                break
    return atoms


def stream(atoms, embeddings, config, use_tags, folder) -> tuple[TriggerBuffer, list[float]]:
    buffer = TriggerBuffer(Path(folder) / "bench.sqlite", config, embeddings=embeddings)
    add_seconds = []
    for text, tag in atoms:
        start = time.perf_counter()
        buffer.add(text, tag=tag if use_tags else "all", payload={"operator": tag})
        add_seconds.append(time.perf_counter() - start)
    return buffer, add_seconds


def score(buffer: TriggerBuffer, total: int) -> dict[str, float]:
    clusters = buffer.clusters()
    truth = [m.payload["operator"] for c in clusters for m in c.samples]
    found = [c.id for c in clusters for _ in c.samples]
    sizes = np.array([c.size for c in clusters], dtype=float)
    if not found:
        return {"clusters": 0, "clustered": 0.0}
    cohesion = []
    for c in clusters:
        vectors = np.array(buffer.embeddings.embed_documents([m.text for m in c.samples]))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cohesion += (vectors @ c.centroid).tolist()
    return {
        "clusters": len(clusters),
        "clustered": len(found) / total,
        "homogeneity": homogeneity_score(truth, found),
        "completeness": completeness_score(truth, found),
        "ARI": adjusted_rand_score(truth, found),
        "NMI": normalized_mutual_info_score(truth, found),
        "centroid similarity": float(np.mean(cohesion)),
        "size spread (CV)": float(sizes.std() / sizes.mean()),
    }


def ablation(atoms, embeddings) -> dict[str, dict[str, float]]:
    table = {}
    for name, (use_tags, config) in VARIANTS.items():
        with tempfile.TemporaryDirectory() as folder:
            buffer, _ = stream(atoms, embeddings, config, use_tags, folder)
            table[name] = score(buffer, len(atoms))
            buffer.close()
        print(f"{name:<18} " + "  ".join(f"{k} {v:.3f}" for k, v in table[name].items()))
    return table


def scale(atoms, embeddings, marks: list[int]) -> list[dict[str, float]]:
    cycled = [atoms[i % len(atoms)] for i in range(max(marks))]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        buffer, add_seconds = stream(cycled, embeddings, BufferConfig(), True, folder)
        attempts = buffer.clusterings()
        for mark in marks:
            window = add_seconds[max(0, mark - 1000) : mark]
            done = [a for a in attempts if max(json.loads(a["sample_ids"])) <= mark]
            rows.append(
                {
                    "samples": mark,
                    "ms per add (last 1k)": 1000 * float(np.mean(window)),
                    "ms per clustering": 1000 * float(np.mean([a["seconds"] for a in done])),
                    "clusterings": len(done),
                    "clusters": buffer.db.execute(
                        "SELECT COUNT(DISTINCT cluster_id) FROM memberships WHERE sample_id <= ?",
                        [mark],
                    ).fetchone()[0],
                }
            )
            print(
                "  ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in rows[-1].items()
                )
            )
        buffer.close()
    return rows


def plot(table: dict[str, dict[str, float]], out: Path) -> None:
    metrics = ["homogeneity", "completeness", "ARI", "NMI", "centroid similarity"]
    x = np.arange(len(metrics))
    width = 0.8 / len(table)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (name, row) in enumerate(table.items()):
        ax.bar(x + i * width, [row.get(m, 0) for m in metrics], width, label=name)
    ax.set_xticks(x + width * (len(table) - 1) / 2, metrics)
    ax.set_ylim(0, 1.05)
    ax.set_title("Streaming buffer clustering ablation on GSM8K atoms (operator labels)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="GSM8K JSONL file")
    parser.add_argument("--atoms", type=int, default=2000, help="atoms in the ablation")
    parser.add_argument("--scale", default="1000,10000,50000", help="marks of the scale run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="600 atoms, scale to 2000")
    args = parser.parse_args()
    if args.quick:
        args.atoms, args.scale = 600, "1000,2000"
    marks = [int(m) for m in args.scale.split(",")]

    atoms = load_atoms(args.data, max(args.atoms, *marks), args.seed)
    texts = sorted({t for t, _ in atoms})
    print(f"{len(atoms)} GSM8K atoms, {len(texts)} distinct; embedding them once ...")
    start = time.perf_counter()
    embeddings = PrecomputedEmbeddings(
        dict(zip(texts, default_embeddings().embed_documents(texts), strict=True))
    )
    print(f"embedded in {time.perf_counter() - start:.0f} s\n")

    print(f"Ablation on the first {args.atoms} atoms of the stream:")
    table = ablation(atoms[: args.atoms], embeddings)
    print("\nScale (full SBC):")
    scale_rows = scale(atoms, embeddings, marks)

    RESULTS.mkdir(exist_ok=True)
    plot(table, RESULTS / "buffer_ablation.png")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    (RESULTS / "buffer.md").write_text(
        f"# Trigger Buffer benchmark\n\nCommand: `{command}`\n\n"
        f"Machine: {os.cpu_count()} CPU cores. Embedder: all-MiniLM-L6-v2 (embedded), "
        f"vectors computed once before streaming. Seed {args.seed}.\n\n"
        f"## Ablation ({args.atoms} GSM8K atoms, operator-signature labels)\n\n"
        + markdown_table([{"variant": k, **v} for k, v in table.items()])
        + "\n\n![ablation](buffer_ablation.png)\n\n## Scale (full SBC)\n\n"
        + markdown_table(scale_rows)
        + "\n"
    )
    print(f"\nwritten to {RESULTS / 'buffer.md'}")


if __name__ == "__main__":
    main()
