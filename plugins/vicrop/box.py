"""ViCrop's adaptive box search over an importance map, and the high-resolution split.

For each size ratio ``r`` the window is ``r * crop_size`` pixels of the original image, i.e.
``int(r * crop_size / block)`` map cells per side (``block`` = image pixels per cell, at least one
cell, at most the whole map). The window with the largest sum is found; its sharpness is
``(sum - mean of the sums of the windows shifted one cell left / right / up / down) / cells``.
The ratio with the sharpest window wins; the box is ``r * crop_size`` pixels centred on that
window, moved inside the image and cut at its borders. As in the authors' ``utils.py``
(``bbox_from_att_image_adaptive``): ties go to the first window scanning columns first (left
most, then top most) and to the first ratio; a window is at least one cell (theirs can be zero
cells wide on images wider than ``cells * crop_size``, and its score then is not a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from mllm_refine.lazy import torch


@dataclass(frozen=True)
class Box:
    """A crop in original image pixels, ``[x0, x1) x [y0, y1)``; ``ratio`` chose its size."""

    x0: int
    y0: int
    x1: int
    y1: int
    ratio: float

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def window_sums(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(R - h + 1, C - w + 1)``: the sum of every ``h x w`` window of ``m`` (R, C)."""
    s = torch.nn.functional.pad(m.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (R + 1, C + 1) integral image
    return s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]


def sharpness(sums: torch.Tensor, y: int, x: int, cells: int) -> float:
    """``(sums[y, x] - mean of its existing 4-neighbours) / cells``."""
    rows, cols = sums.shape
    near = [sums[j, i] for j, i in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x)) if 0 <= j < rows and 0 <= i < cols]
    return float((sums[y, x] - torch.stack(near).mean()) / cells)


def best_box(m: torch.Tensor, image_size: tuple[int, int], crop_size: int, ratios: list[float]) -> Box:
    """The sharpest window of importance map ``m`` (R, C) over an image of ``(width, height)``."""
    R, C = m.shape
    W, H = image_size
    block_w, block_h = W / C, H / R  # image pixels per map cell
    best: tuple[float, int, int, int, int, float] | None = None  # (score, y, x, h, w, ratio)
    for i, ratio in enumerate(ratios):
        w = max(1, min(int(crop_size * ratio / block_w), C))
        h = max(1, min(int(crop_size * ratio / block_h), R))
        if w == C and h == R:  # the window is the whole map: nothing to choose
            if i == 0:
                return Box(0, 0, W, H, ratio)
            continue
        sums = window_sums(m, h, w)  # (R - h + 1, C - w + 1)
        x, y = divmod(int(sums.T.argmax()), sums.shape[0])  # first maximum scanning columns first
        score = sharpness(sums, y, x, h * w)
        if best is None or score > best[0]:
            best = (score, y, x, h, w, ratio)
    assert best is not None
    _, y, x, h, w, ratio = best
    size = crop_size * ratio
    half = int(size // 2)
    cx = int(x * block_w + block_w * w / 2)  # window centre in image pixels
    cy = int(y * block_h + block_h * h / 2)
    cx = min(max(cx, half), W - half)  # keep the box inside the image where it fits
    cy = min(max(cy, half), H - half)
    return Box(max(0, cx - half), max(0, cy - half), min(W, cx + half), min(H, cy + half), ratio)


def split_grid(image_size: tuple[int, int], limit: int) -> tuple[int, int]:
    """``(columns, rows)`` of blocks of the high-resolution split: rows ``ceil(H / limit)``, columns
    ``rows * W / H`` rounded down and at least 1 (where the authors' formula gives 0, a portrait
    image, their split divides by zero). An image that fits ``limit`` still splits when it is at
    least twice as wide as tall; ``limit <= 0`` never splits."""
    W, H = image_size
    if limit <= 0:
        return 1, 1
    rows = math.ceil(H / limit)
    return max(1, int(rows * W / H)), rows


def split_image(image: Image.Image, cols: int, rows: int) -> list[Image.Image]:
    """The blocks of ``image`` row-major, each ``ceil(W / cols) x ceil(H / rows)`` (the last ones
    padded with black past the border)."""
    W, H = image.size
    bw, bh = math.ceil(W / cols), math.ceil(H / rows)
    return [image.crop((c * bw, r * bh, (c + 1) * bw, (r + 1) * bh)) for r in range(rows) for c in range(cols)]


def stitch(maps: list[torch.Tensor], cols: int, rows: int) -> torch.Tensor:
    """One map from the row-major block maps; blocks are resized to the first one's shape."""
    shape = maps[0].shape
    same = [
        m if m.shape == shape else torch.nn.functional.interpolate(m[None, None], size=shape, mode="bilinear")[0, 0]
        for m in maps
    ]
    return torch.cat([torch.cat(same[r * cols : (r + 1) * cols], dim=1) for r in range(rows)], dim=0)
