"""Accuracy against the target's relative size (box area / image area) for run folders over the
easy-VQA scenes, one line per run, with 95 % Wilson intervals; the figure of docs/scenes.md.

    python scripts/plot_by_size.py runs/scenes_qwen/vanilla runs/scenes_qwen/vicrop_rel \
        --output docs/scenes/qwen_vicrop_by_size.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from mllm_refine.metrics.exact_match import normalize

EDGES = np.geomspace(1 / 2048, 1 / 4, 9)  # 8 log-spaced bins of relative size


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def by_size(run: Path) -> tuple[list[float], list[tuple[float, float]], list[int]]:
    """Accuracy per bin of EDGES over the run's records that have a target, with intervals."""
    hits, totals = np.zeros(len(EDGES) - 1, int), np.zeros(len(EDGES) - 1, int)
    for line in (run / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        rel = (r.get("meta") or {}).get("rel_size")
        if r.get("error") or rel is None:
            continue
        k = int(np.clip(np.searchsorted(EDGES, rel) - 1, 0, len(EDGES) - 2))
        totals[k] += 1
        hits[k] += normalize(str(r["prediction"] or "")) in {normalize(str(a)) for a in r["answers"]}
    acc = [h / n if n else math.nan for h, n in zip(hits, totals)]
    return acc, [wilson(int(h), int(n)) for h, n in zip(hits, totals)], totals.tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--title", default="accuracy against the target's relative size (easy-VQA scenes test)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.sqrt(EDGES[:-1] * EDGES[1:])
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for run in args.runs:
        acc, ci, n = by_size(run)
        label = json.loads((run / "summary.json").read_text()).get("recipe", run.name) if (run / "summary.json").is_file() else run.name
        ax.plot(centres, acc, marker="o", label=label)
        ax.fill_between(centres, [a for a, _ in ci], [b for _, b in ci], alpha=0.15)
        print(label, " ".join(f"{c:.4f}:{a:.3f}(n={k})" for c, a, k in zip(centres, acc, n)))
    for edge, name in ((1 / 64, "1 cell"), (1 / 16, "4 cells")):
        ax.axvline(edge, color="grey", lw=0.8, ls="--")
        ax.text(edge, 0.02, f" {name}", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("target box area / image area")
    ax.set_ylabel("exact match")
    ax.set_title(args.title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output)
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
