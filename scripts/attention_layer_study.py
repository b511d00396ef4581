"""Pointing game of prompt-attention maps at every block of a model, per size bucket.

For each question with a target box, one prefill over the question and ViCrop's generic question
keeps the last prompt row of every block; per block it scores three maps against the box:
``A(q)`` (head-mean attention of the question), ``A(q) / A(q')`` (ViCrop's rel-att) and
``A(q) - A(q')``, and the share of the row's attention that falls on the image at all. It
answers which block's attention localises on a model, and whether the rel-att ratio keeps that.
``--landing BLOCK`` (repeatable) also counts, at those blocks, where each map's top cell lands:
on the target, on another object of the scene, or elsewhere.

    python scripts/attention_layer_study.py recipes/scenes_qwen/vanilla.yaml data.split=train --limit 400 --threads 2
    python scripts/attention_layer_study.py recipes/scenes_qwen/vanilla.yaml --landing 1 --landing 9 --landing 14
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import torch

from mllm_refine.components import Sample
from mllm_refine.engine.decoder import Decoder
from mllm_refine.metrics.localisation import localise, ordered_buckets, top_cell_lands
from mllm_refine.models import load_model
from mllm_refine.recipes import load_recipe
from mllm_refine.run import build_dataset
from mllm_refine_plugins.vicrop.maps import token_maps
from mllm_refine_plugins.vicrop.refiner import GENERIC

MAPS = ("att", "rel_att", "diff")
LANDINGS = ("target", "other object", "elsewhere")


def targets(dataset, limit: int | None) -> list[Sample]:
    """The dataset's first ``limit`` samples that have a target box."""
    out = []
    for i in range(len(dataset)):
        s = dataset[i]
        if s.meta.get("target_box") and s.images:
            out.append(s)
            if limit and len(out) >= limit:
                break
    return out


def others(sample: Sample) -> list[list[float]]:
    """The boxes of the sample's scene objects other than its target (none without ``objects``)."""
    target = list(sample.meta["target_box"])
    return [list(o["box"]) for o in sample.meta.get("objects", []) if list(o["box"]) != target]


def study(
    recipe: str, overrides: list[str], limit: int | None, batch: int, generic: str, landing: tuple[int, ...] = ()
) -> dict[str, dict[str, list[float]]]:
    """``{map: {bucket: [pointing game % per block 1..L]}}`` plus the chance per bucket; with
    ``landing`` blocks, ``{"landing <block> <map>": {bucket: [% per LANDINGS]}}`` too."""
    r = load_recipe(recipe, overrides)
    model, processor = load_model(**r.model)
    decoder = Decoder(model, processor)
    L = decoder.info.num_layers
    layers = list(range(1, L + 1))
    samples = targets(build_dataset(r.data, r.source), limit)
    hits: dict[str, dict[str, torch.Tensor]] = {m: defaultdict(lambda: torch.zeros(L)) for m in MAPS}
    chance: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    lands: dict[str, dict[str, torch.Tensor]] = defaultdict(lambda: defaultdict(lambda: torch.zeros(len(LANDINGS))))
    share = torch.zeros(2, L)  # summed image share of the last prompt row's attention, q and q'
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        B = len(chunk)
        with torch.no_grad():
            p = decoder.prefill(chunk + [dataclasses.replace(s, question=generic) for s in chunk], layers, logits=False)
        for j, layer in enumerate(layers):
            a = p.image_rows(layer).mean(1)  # (2B, I) head mean
            share[:, j] += a.sum(-1).view(2, B).sum(-1)  # (2,) the row's mass on the image, summed over samples
            values = {
                "att": a[:B],
                "rel_att": a[:B] / a[B:].clamp_min(torch.finfo(a.dtype).tiny),
                "diff": a[:B] - a[B:],
            }
            for name, v in values.items():
                for b, m in enumerate(token_maps(p, v)):
                    s = chunk[b]
                    score = localise(m.tolist(), s.meta["target_box"], s.meta["image_size"], where=str(s.id))
                    if layer in landing:
                        cat = top_cell_lands(m.tolist(), s.meta["target_box"], others(s), s.meta["image_size"], str(s.id))
                        for bucket in ("all", s.meta["size_bucket"]):
                            lands[f"landing {layer} {name}"][bucket][LANDINGS.index(cat)] += 1
                    for bucket in ("all", s.meta["size_bucket"]):
                        hits[name][bucket][j] += score["pointing_game"]
                        if name == "att" and j == 0:
                            chance[bucket] += score["pointing_chance"]
                            count[bucket] += 1
        print(f"{start + B}/{len(samples)}", flush=True)
    buckets = ["all", *ordered_buckets(set(count) - {"all"})]
    out: dict[str, dict[str, list[float]]] = {
        name: {b: (100 * hits[name][b] / count[b]).tolist() for b in buckets} for name in MAPS
    }
    out["chance"] = {b: [100 * chance[b] / count[b]] for b in buckets}
    for key, per_bucket in lands.items():
        out[key] = {b: (100 * per_bucket[b] / count[b]).tolist() for b in buckets}
    out["n"] = {b: [float(count[b])] for b in buckets}
    out["image share"] = {"q": (100 * share[0] / len(samples)).tolist(), "generic": (100 * share[1] / len(samples)).tolist()}
    return out


def table(result: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: one row per block, pointing game of each map on all targets and per bucket, and
    the share of the last prompt row's attention that falls on the image (q, then q')."""
    buckets = list(result["chance"])
    share = result["image share"]
    head = "| block | " + " | ".join(f"{m} {b}" for m in MAPS for b in buckets) + " | image share q % | image share q' % |"
    rows = [head, "|---:|" + "---:|" * (len(MAPS) * len(buckets) + 2)]
    L = len(result["att"]["all"])
    for j in range(L):
        cells = " | ".join(f"{result[m][b][j]:.1f}" for m in MAPS for b in buckets)
        rows.append(f"| {j + 1} | {cells} | {share['q'][j]:.2f} | {share['generic'][j]:.2f} |")
    rows.append("| chance | " + " | ".join(f"{result['chance'][b][0]:.1f}" for _ in MAPS for b in buckets) + " | | |")
    return "\n".join(rows)


def landing_table(result: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: per landing block and map, the share of top cells on the target, on another
    object and elsewhere, on all targets and per bucket."""
    buckets = list(result["chance"])
    rows = ["| block, map | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for key in (k for k in result if k.startswith("landing ")):
        cells = [" / ".join(f"{v:.1f}" for v in result[key][b]) for b in buckets]
        rows.append(f"| {key.removeprefix('landing ')} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n(each cell: % target / other object / elsewhere)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides, e.g. data.split=train")
    ap.add_argument("--limit", type=int, default=None, help="first N questions with a target")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--generic", default=GENERIC)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=None, help="write the result as JSON here")
    ap.add_argument("--landing", type=int, action="append", default=[], help="block whose top cells are placed (repeatable)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = study(a.recipe, a.overrides, a.limit, a.batch, a.generic, tuple(a.landing))
    if a.output:
        Path(a.output).write_text(json.dumps(result, indent=1))
    print(table(result))
    if a.landing:
        print()
        print(landing_table(result))


if __name__ == "__main__":
    main()
