"""Localisation of importance maps against target boxes: pointing game and mass in box.

A map is an ``(h, w)`` grid laid evenly over the whole image (``W x H`` pixels; it need not be
square): cell ``(r, c)`` covers ``[c W / w, (c + 1) W / w) x [r H / h, (r + 1) H / h)``. Boxes are
``[x0, y0, x1, y1]`` in pixels, ``x1`` and ``y1`` exclusive (clipped to the image).

- ``pointing_game``: 1 when the map's largest cell overlaps the box (positive area). Ties go to
  the first maximum in raster order (row by row), so a flat map points at its top-left cell and
  gets no free hit. ``pointing_chance`` is the hit rate of a uniformly random cell: the share of
  cells that overlap the box.
- ``mass_in_box``: the share of the map's positive mass inside the box, each cell counted by the
  fraction of its area inside (the map read as piecewise constant over the image). Negative values
  count as 0; a map with no positive mass scores 0. ``mass_chance`` is a flat map's score: the
  box's area over the image's.

Both are ``StatsMetric`` sums (they reduce across ranks and bootstrap like the answer metrics),
updated with maps, boxes and image sizes instead of answers. ``record_maps`` finds a map in a
prediction record by key shape: a leaf named one of ``MAP_KEYS`` in ``meta`` or ``choices``
holding a list of equal-length lists of numbers (ViCrop and contrastive crop write
``meta.<refiner>.map``); ``localisation_scores`` scores every such map of a run against
``meta.target_box`` and ``meta.image_size``.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

from mllm_refine.lazy import torch
from mllm_refine.metrics.base import StatsMetric

MAP_KEYS = ("map", "importance", "importance_map", "att_map")
SIZE_ORDER = ("small", "medium", "large")
Box = Sequence[float]


def ordered_buckets(names: set[Any]) -> list[str]:
    """Size buckets small, medium, large first, any others after them by name."""
    known = [b for b in SIZE_ORDER if b in names]
    return known + sorted(str(b) for b in names if b not in SIZE_ORDER)


def cell_overlap(shape: tuple[int, int], box: Box, image_size: tuple[int, int]) -> torch.Tensor:
    """``(h, w)`` float64: the fraction of each cell's area inside ``box``."""
    h, w = shape
    W, H = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, x0), min(float(W), x1)
    y0, y1 = max(0.0, y0), min(float(H), y1)
    xs = torch.arange(w + 1, dtype=torch.float64) * (W / w)  # (w + 1,) cell edges
    ys = torch.arange(h + 1, dtype=torch.float64) * (H / h)  # (h + 1,)
    ox = (torch.minimum(xs[1:], torch.tensor(x1)) - torch.maximum(xs[:-1], torch.tensor(x0))).clamp_min(0) / (W / w)
    oy = (torch.minimum(ys[1:], torch.tensor(y1)) - torch.maximum(ys[:-1], torch.tensor(y0))).clamp_min(0) / (H / h)
    return oy[:, None] * ox[None, :]  # (h, w)


def check_map(m: Any, box: Box, image_size: Sequence[int], where: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """The map as a finite ``(h, w)`` float64 tensor and the size as ``(W, H)``, or a one-line
    ``ValueError`` naming ``where`` and what is wrong."""
    t = torch.as_tensor(m, dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{where}: a map is an (h, w) grid, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{where}: the map holds NaN or infinite values")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"{where}: image size must be (width, height) > 0, got {list(image_size)}")
    W, H = int(image_size[0]), int(image_size[1])
    if len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise ValueError(f"{where}: a box is [x0, y0, x1, y1], got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x1, W) <= max(x0, 0) or min(y1, H) <= max(y0, 0):
        raise ValueError(f"{where}: box {list(box)} has no area inside the {W}x{H} image")
    return t, (W, H)


def localise(m: Any, box: Box, image_size: Sequence[int], where: str = "map") -> dict[str, float]:
    """One map's ``pointing_game``, ``pointing_chance``, ``mass_in_box`` and ``mass_chance``."""
    t, size = check_map(m, box, image_size, where)
    inside = cell_overlap((t.shape[0], t.shape[1]), box, size)  # (h, w)
    top = int(torch.argmax(t.flatten()))  # first maximum in raster order
    mass = t.clamp_min(0)
    total = float(mass.sum())
    x0, y0, x1, y1 = (float(v) for v in box)
    W, H = size
    area = (min(x1, W) - max(x0, 0)) * (min(y1, H) - max(y0, 0))
    return {
        "pointing_game": float(inside.flatten()[top] > 0),
        "pointing_chance": float((inside > 0).double().mean()),
        "mass_in_box": float((mass * inside).sum()) / total if total > 0 else 0.0,
        "mass_chance": area / (W * H),
    }


def top_cell_lands(m: Any, box: Box, others: Sequence[Box], image_size: Sequence[int], where: str = "map") -> str:
    """Where the map's largest cell (the pointing game's cell) lands: ``"target"`` when it
    overlaps ``box``, else ``"other object"`` when it overlaps one of the ``others`` boxes (the
    scene's other objects), else ``"elsewhere"``. Tells a map that finds objects but not the one
    asked about from a map that finds nothing."""
    t, size = check_map(m, box, image_size, where)
    shape = (t.shape[0], t.shape[1])
    top = int(torch.argmax(t.flatten()))  # first maximum in raster order, as pointing_game
    if cell_overlap(shape, box, size).flatten()[top] > 0:
        return "target"
    if any(cell_overlap(shape, o, size).flatten()[top] > 0 for o in others):
        return "other object"
    return "elsewhere"


class MapMetric(StatsMetric):
    """A metric of maps against boxes: ``update(maps, boxes, image_sizes)``."""

    scores_maps = True  # not an answer metric: ``run`` refuses it as ``metric:``
    keys: tuple[str, ...] = ()

    def sample_stats(self, maps: list[Any], boxes: list[Box], image_sizes: list[Sequence[int]]) -> torch.Tensor:  # type: ignore[override]
        rows = []
        for i, (m, box, size) in enumerate(zip(maps, boxes, image_sizes, strict=True)):
            values = localise(m, box, size, f"map {i}")
            rows.append([values[k] for k in self.keys] + [1.0])
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, len(self.stats))

    def update(self, maps: list[Any], boxes: list[Box], image_sizes: list[Sequence[int]]) -> None:  # type: ignore[override]
        if not len(maps) == len(boxes) == len(image_sizes):
            raise ValueError(f"{len(maps)} maps, {len(boxes)} boxes and {len(image_sizes)} image sizes")
        if maps:
            self.sums += self.sample_stats(maps, boxes, image_sizes).sum(0).to(self.sums.device)

    def reduce(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        n = sums[..., -1].clamp_min(1.0)
        return {k: sums[..., j] / n for j, k in enumerate(self.keys)}


class PointingGame(MapMetric):
    """Share of maps whose largest cell (first in raster order) overlaps the target box."""

    keys = ("pointing_game", "pointing_chance")
    stats = (*keys, "count")
    primary = "pointing_game"


class MassInBox(MapMetric):
    """Share of each map's positive mass inside the target box, averaged over maps."""

    keys = ("mass_in_box", "mass_chance")
    stats = (*keys, "count")
    primary = "mass_in_box"


def _flat(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def is_map(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(r, list) and r and len(r) == len(value[0]) for r in value)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in value for v in r)
    )  # fmt: skip


def record_maps(record: dict[str, Any]) -> dict[str, list[list[float]]]:
    """The maps a prediction record carries, by where they are (``meta.vicrop.map``)."""
    out = {}
    for where in ("meta", "choices"):
        for key, value in _flat(record.get(where) or {}):
            if key.rsplit(".", 1)[-1] in MAP_KEYS and is_map(value):
                out[f"{where}.{key}"] = value
    return out


def localisation_scores(records: list[dict[str, Any]], bucket_key: str = "size_bucket") -> dict[str, Any]:
    """Per map source: pointing game and mass in box over the records with a map, a
    ``meta.target_box`` and a ``meta.image_size``, also by ``meta[bucket_key]``; ``{}`` when none
    has all three. A map that fails ``check_map`` is counted under ``invalid``."""
    groups: dict[str, list[tuple[Any, Box, Sequence[int], Any]]] = {}
    invalid: dict[str, int] = {}
    for r in records:
        meta = r.get("meta") or {}
        box, size = meta.get("target_box"), meta.get("image_size")
        if r.get("error") or box is None or size is None:
            continue
        for source, m in record_maps(r).items():
            try:
                check_map(m, box, size, str(r.get("id")))
            except ValueError:
                invalid[source] = invalid.get(source, 0) + 1
                continue
            groups.setdefault(source, []).append((m, box, size, meta.get(bucket_key)))
    out: dict[str, Any] = {}
    for source, rows in sorted(groups.items()):
        entry = _scores(rows)
        buckets = ordered_buckets({b for *_, b in rows if b is not None})
        if buckets:
            entry["by_size"] = {b: _scores([row for row in rows if row[3] == b]) for b in buckets}
        if invalid.get(source):
            entry["invalid"] = invalid[source]
        out[source] = entry
    return out


def _scores(rows: list[tuple[Any, Box, Sequence[int], Any]]) -> dict[str, Any]:
    maps, boxes, sizes = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    entry: dict[str, Any] = {}
    for metric in (PointingGame(), MassInBox()):
        metric.distributed_available_fn = lambda: False
        metric.update(maps, boxes, sizes)
        values = metric.compute()
        assert isinstance(values, dict)  # a map metric has two values
        entry.update({k: float(v) for k, v in values.items()})
    entry["n"] = len(rows)
    return entry
