"""The numbers behind each plot, as JSON-ready dicts computed from a ``Trace``.

Plots read only these dicts, so the JSON written beside each PNG is exactly what it shows.
What a recipe chose (layers, heads, a crop) is read from the prediction's ``choices`` and
``meta`` by key shape, so parts written later show up without changes here.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from mllm_refine.engine import Prediction
from mllm_refine.functional import hellinger
from mllm_refine.metrics.localisation import MAP_KEYS
from mllm_refine.viz.capture import StepRecord, Trace

BOX_KEYS = ("box", "crop_box", "bbox")
LAYER_KEYS = ("layer", "anchor", "anchor_layer", "basic_layer")


def _flat(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            yield from _flat(value, f"{name}.")
        else:
            yield name, value


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def chosen_layers(prediction: Prediction, step: int) -> dict[str, int]:
    """Layers the recipe chose at ``step`` (e.g. DualPD's basic layer), by choices key."""
    out: dict[str, int] = {}
    for key, value in _flat(prediction.choices):
        if _leaf(key) not in LAYER_KEYS:
            continue
        if isinstance(value, list):
            value = value[step] if step < len(value) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = value
    return out


def marked_heads(prediction: Prediction) -> dict[str, dict[int, list[int]]]:
    """Heads a part filtered or reweighted, per choices key: ``{key: {layer: [heads]}}``.

    Accepts ``{layer: [heads]}`` (DualPD's ``heads``) and ``[[layer, head], ...]`` values.
    """
    out: dict[str, dict[int, list[int]]] = {}
    for key, value in prediction.choices.items():
        if not _leaf(key).endswith("heads"):
            continue
        heads: dict[int, list[int]] = {}
        if isinstance(value, dict):
            for layer, hs in value.items():
                heads[int(layer)] = sorted(int(h) for h in hs)
        elif isinstance(value, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            for layer, h in value:
                heads.setdefault(int(layer), []).append(int(h))
        else:
            continue
        out[key] = heads
    return out


def _grid_of(vector: torch.Tensor, grid: tuple[int, int] | None, row_end: int) -> list[list[float]] | None:
    """``(I,)`` over image slots -> the first grid's ``rows x cols`` cells, or None."""
    if grid is None:
        return None
    rows, cols = grid
    span = rows * (cols + row_end)
    if vector.numel() < span:
        return None
    return vector[:span].reshape(rows, cols + row_end)[:, :cols].tolist()


def attention_numbers(trace: Trace, rec: StepRecord) -> dict[str, Any]:
    """Head-mean attention of each block over the image (renormalised over the image span)."""
    mean = rec.attention.mean(1)  # (L, I)
    layers = chosen_layers(trace.prediction, rec.step)
    return {
        "layers": list(range(1, trace.num_layers + 1)),
        "grid": list(trace.grid) if trace.grid else None,
        "maps": [_grid_of(m, trace.grid, trace.row_end) for m in mean],
        "head_mean": mean.tolist(),
        "image_mass": rec.image_mass.mean(1).tolist(),  # head-mean share of the row on the image
        "marked": sorted(set(layers.values())),
    }


def shift_numbers(trace: Trace, rec: StepRecord) -> dict[str, Any]:
    """``s_l = Hellinger(Abar_{l-1}, Abar_l)`` for blocks 2..L, with the recipe's chosen layer."""
    mean = rec.attention.mean(1)  # (L, I); row l-1 is block l
    shift = hellinger(mean[:-1], mean[1:])  # (L-1,): block l vs l-1 for l = 2..L
    layers = chosen_layers(trace.prediction, rec.step)
    return {
        "layers": list(range(2, trace.num_layers + 1)),
        "shift": shift.tolist(),
        "candidates": trace.candidates,
        "chosen": layers,
    }


def head_numbers(trace: Trace, rec: StepRecord) -> dict[str, Any]:
    """L2 norm of each head's pre-softmax row (before any filter), with the heads parts marked."""
    marked = marked_heads(trace.prediction)
    return {
        "layers": list(range(1, trace.num_layers + 1)),
        "heads": trace.num_heads,
        "norm": rec.head_norm.tolist(),
        "marked": {k: {str(l): h for l, h in v.items()} for k, v in marked.items()},
    }


def _top(probs: torch.Tensor, k: int, text: dict[int, str]) -> list[dict[str, Any]]:
    p, ids = probs.topk(min(k, probs.numel()))
    return [{"token": int(i), "text": text.get(int(i), ""), "p": float(v)} for v, i in zip(p, ids)]


def lens_numbers(trace: Trace, rec: StepRecord, k: int = 5) -> dict[str, Any]:
    """Logit lens at layers 0..L: top tokens and the probability of the emitted token."""
    text = trace.token_text
    return {
        "layers": list(range(trace.num_layers + 1)),
        "token": rec.token,
        "token_text": text.get(rec.token, ""),
        "p_token": rec.lens[:, rec.token].tolist(),
        "top": [_top(row, k, text) for row in rec.lens],
        "final": {"p_token": float(rec.final[rec.token]), "top": _top(rec.final, k, text)},
        "decoded": {"p_token": float(rec.decoded[rec.token]), "top": _top(rec.decoded, k, text)},
        "chosen": chosen_layers(trace.prediction, rec.step),
    }


def _is_box(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


def _as_map(value: Any) -> list[list[float]] | None:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list) and value and all(isinstance(r, list) and r for r in value):
        if all(isinstance(v, (int, float)) for r in value for v in r):
            return [[float(v) for v in r] for r in value]
    return None


def crop_numbers(prediction: Prediction) -> dict[str, Any]:
    """An input refiner's crop box (original pixels) and importance map, where it reported them,
    and the sample's own ``meta.target_box`` (the object the question is about), where it has one."""
    target = prediction.meta.get("target_box")
    target = [float(v) for v in target] if _is_box(target) else None
    box, grid, source = None, None, {}
    for where, tree in (("meta", prediction.meta), ("choices", prediction.choices)):
        for key, value in _flat(tree):
            leaf = _leaf(key)
            if box is None and leaf in BOX_KEYS and _is_box(value):
                box, source["box"] = [float(v) for v in value], f"{where}.{key}"
            elif grid is None and leaf in MAP_KEYS and _as_map(value) is not None:
                grid, source["map"] = _as_map(value), f"{where}.{key}"
    out: dict[str, Any] = {"box": box, "map": grid, "source": source}
    if target is not None:
        out["target"] = target
    return out


def step_numbers(trace: Trace, rec: StepRecord) -> dict[str, dict[str, Any]]:
    """Every plot's numbers for one step."""
    return {
        "attention": attention_numbers(trace, rec),
        "shift": shift_numbers(trace, rec),
        "heads": head_numbers(trace, rec),
        "lens": lens_numbers(trace, rec),
        "crop": crop_numbers(trace.prediction),
    }
