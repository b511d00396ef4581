"""ViCrop's box search on synthetic maps with a known hot spot, and the high-resolution split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_refine_plugins.vicrop.box import best_box, sharpness, split_grid, split_image, stitch, window_sums


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
    assert split_grid((1000, 400), 1024) == (2, 1)  # fits, but twice as wide as tall: the authors split it
    assert split_grid((900, 2000), 1024) == (1, 2)  # the authors' int(2 * 900 / 2000) = 0 divides by zero
    assert split_grid((5000, 5000), 0) == (1, 1)
    blocks = split_image(Image.new("RGB", (30, 20)), 3, 2)
    assert len(blocks) == 6 and all(b.size == (10, 10) for b in blocks)
    maps = [torch.full((2, 2), float(i)) for i in range(6)]
    s = stitch(maps, 3, 2)
    assert s.shape == (4, 6)
    assert s[0, 0] == 0 and s[0, 5] == 2 and s[3, 0] == 3 and s[3, 5] == 5


def authors_box(att: np.ndarray, image_size: tuple[int, int], bbox_size: int) -> tuple[float, ...]:
    """The authors' adaptive box (saccharomycetes/mllms_know, ``utils.py``,
    ``bbox_from_att_image_adaptive``), written out loop by loop."""
    ratios = [1, 1.2, 1.4, 1.6, 1.8, 2]
    R, C = att.shape
    bw, bh = image_size[0] / C, image_size[1] / R
    poses, scores, nums = [], [], []
    for ratio in ratios:
        nx, ny = min(int(bbox_size * ratio / bw), C), min(int(bbox_size * ratio / bh), R)
        if C - nx < 1 and R - ny < 1:
            if ratio == 1:
                return 0, 0, image_size[0], image_size[1]
            continue
        nums.append((nx, ny))
        sums = np.zeros((R - ny + 1, C - nx + 1))
        best, pos = -np.inf, (0, 0)
        for x in range(C - nx + 1):  # columns outside, rows inside: ties go to the left-most window
            for y in range(R - ny + 1):
                v = att[y : y + ny, x : x + nx].sum()
                sums[y, x] = v
                if v > best:
                    best, pos = v, (x, y)
        near = []
        if pos[0] > 0:
            near.append(sums[pos[1], pos[0] - 1])
        if pos[0] < sums.shape[1] - 1:
            near.append(sums[pos[1], pos[0] + 1])
        if pos[1] > 0:
            near.append(sums[pos[1] - 1, pos[0]])
        if pos[1] < sums.shape[0] - 1:
            near.append(sums[pos[1] + 1, pos[0]])
        scores.append((best - np.mean(near)) / (nx * ny))
        poses.append(pos)
    i = int(np.argmax(scores))
    (x, y), (nx, ny), size = poses[i], nums[i], bbox_size * ratios[i]
    xc, yc = int(x * bw + bw * nx / 2), int(y * bh + bh * ny / 2)
    xc = size // 2 if xc < size // 2 else xc
    yc = size // 2 if yc < size // 2 else yc
    xc = image_size[0] - size // 2 if xc > image_size[0] - size // 2 else xc
    yc = image_size[1] - size // 2 if yc > image_size[1] - size // 2 else yc
    return (max(0, xc - size // 2), max(0, yc - size // 2),
            min(image_size[0], xc + size // 2), min(image_size[1], yc + size // 2))  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_best_box_matches_the_authors(seed):
    rng = np.random.default_rng(seed)
    R, C = [(24, 24), (16, 16), (12, 20), (24, 24), (8, 30), (24, 24)][seed]
    W, H = [(640, 480), (500, 900), (1200, 700), (336, 336), (2000, 400), (700, 700)][seed]
    att = rng.random((R, C)) ** 4
    if seed == 5:  # exact ties: two equally hot cells, and a flat rest
        att = np.full((R, C), 0.5)
        att[2, 17] = att[17, 2] = 3.0
    box = best_box(torch.from_numpy(att), (W, H), 224, [1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
    assert box.as_list() == [int(v) for v in authors_box(att, (W, H), 224)]


def test_equal_windows_go_to_the_left_most():
    # Two hot cells of the same weight: top-right (row 1, col 10) and bottom-left (row 10, col 1);
    # values exact in binary, so that every window sum is exact and the two windows tie.
    m = torch.full((12, 12), 0.25, dtype=torch.float64)
    m[1, 10] = m[10, 1] = 1.0
    box = best_box(m, (240, 240), crop_size=40, ratios=[1.0])  # 2 x 2-cell windows of 20 px cells
    assert box.x0 < 120 and box.y0 > 120  # the bottom-left one: columns are scanned first
