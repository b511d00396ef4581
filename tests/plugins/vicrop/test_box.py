"""ViCrop's box search on synthetic maps with a known hot spot, and the high-resolution split."""

from __future__ import annotations

import itertools

import pytest
import torch

from mllm_refine_plugins.vicrop.box import best_box, sharpness, split_grid, split_image, stitch, window_sums
from PIL import Image


def hot_map(rows: int, cols: int, cells: list[tuple[int, int]]) -> torch.Tensor:
    m = torch.full((rows, cols), 0.01, dtype=torch.float64)
    for r, c in cells:
        m[r, c] = 1.0
    return m


def test_window_sums_match_brute_force():
    m = torch.arange(30, dtype=torch.float64).reshape(5, 6) ** 1.5
    s = window_sums(m, 2, 3)
    assert s.shape == (4, 4)
    for y, x in itertools.product(range(4), range(4)):
        assert s[y, x].item() == pytest.approx(m[y : y + 2, x : x + 3].sum().item())


def test_sharpness_by_hand():
    sums = torch.tensor([[1.0, 2.0, 1.0], [3.0, 9.0, 5.0], [1.0, 7.0, 1.0]], dtype=torch.float64)
    assert sharpness(sums, 1, 1, 4) == pytest.approx((9 - (3 + 5 + 2 + 7) / 4) / 4)
    assert sharpness(sums, 0, 0, 2) == pytest.approx((1 - (2 + 3) / 2) / 2)  # corner: two neighbours


@pytest.mark.parametrize("ratio", [1.0, 1.4, 2.0])
def test_box_contains_hot_spot_and_has_the_ratio_size(ratio):
    # 24 x 24 map over a 480 x 480 image: 20 px per cell; hot cells at rows 5-6, cols 15-16.
    m = hot_map(24, 24, [(5, 15), (5, 16), (6, 15), (6, 16)])
    box = best_box(m, (480, 480), crop_size=100, ratios=[ratio])
    assert box.ratio == ratio
    side = 2 * int(100 * ratio // 2)
    assert (box.x1 - box.x0, box.y1 - box.y0) == (side, side)
    assert box.x0 <= 15 * 20 and box.x1 >= 17 * 20 and box.y0 <= 5 * 20 and box.y1 >= 7 * 20


def test_sharpest_ratio_wins():
    # A hot 5 x 5 block of cells (100 px): the 1.0 window (5 cells) fits it exactly, so shifting it
    # by one cell loses a whole column; larger windows only add cold cells.
    cells = [(r, c) for r in range(8, 13) for c in range(3, 8)]
    box = best_box(hot_map(24, 24, cells), (480, 480), crop_size=100, ratios=[1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
    assert box.ratio == 1.0
    assert box.as_list() == [60, 160, 160, 260]


def test_box_is_clamped_at_borders():
    m = hot_map(24, 24, [(0, 23)])  # top-right corner
    box = best_box(m, (480, 480), crop_size=100, ratios=[1.2])
    assert (box.x1, box.y0) == (480, 0)
    assert (box.x1 - box.x0, box.y1 - box.y0) == (120, 120)  # moved inside, not cut
    whole = best_box(m, (60, 40), crop_size=100, ratios=[1.0, 2.0])  # crop larger than the image
    assert whole.as_list() == [0, 0, 60, 40]
    wide = best_box(hot_map(4, 12, [(1, 11)]), (120, 40), crop_size=60, ratios=[1.0])  # taller than the image
    assert wide.x1 == 120 and wide.x1 - wide.x0 == 60 and (wide.y0, wide.y1) == (0, 40)


def test_split_grid_and_stitch():
    assert split_grid((1000, 900), 1024) == (1, 1)
    assert split_grid((3000, 800), 1024) == (3, 1)
    assert split_grid((800, 3000), 1024) == (1, 3)
    assert split_grid((2100, 2100), 1024) == (3, 3)
    assert split_grid((5000, 5000), 0) == (1, 1)
    blocks = split_image(Image.new("RGB", (30, 20)), 3, 2)
    assert len(blocks) == 6 and all(b.size == (10, 10) for b in blocks)
    maps = [torch.full((2, 2), float(i)) for i in range(6)]
    s = stitch(maps, 3, 2)
    assert s.shape == (4, 6)
    assert s[0, 0] == 0 and s[0, 5] == 2 and s[3, 0] == 3 and s[3, 5] == 5
