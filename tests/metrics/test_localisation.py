"""Pointing game and mass in box on hand-made maps: inside, outside, ties, non-square grids."""

from __future__ import annotations

import pytest
import torch

from mllm_refine.metrics.localisation import (
    MassInBox,
    PointingGame,
    cell_overlap,
    localisation_scores,
    localise,
    record_maps,
    top_cell_lands,
)
from mllm_refine.plugin_manager import get_registry

IMAGE = (224, 224)
BOX = [112, 0, 224, 112]  # the top-right quarter


def _peak(r: int, c: int, shape: tuple[int, int] = (4, 4)) -> list[list[float]]:
    m = torch.zeros(shape)
    m[r, c] = 1.0
    return m.tolist()


def test_peak_inside_hits_and_holds_all_mass():
    v = localise(_peak(0, 3), BOX, IMAGE)
    assert v["pointing_game"] == 1.0 and v["mass_in_box"] == 1.0
    assert v["pointing_chance"] == 4 / 16 and v["mass_chance"] == 0.25


def test_peak_outside_misses_and_holds_no_mass():
    v = localise(_peak(3, 0), BOX, IMAGE)
    assert v["pointing_game"] == 0.0 and v["mass_in_box"] == 0.0


def test_ties_go_to_the_first_maximum_in_raster_order():
    flat = [[1.0] * 4 for _ in range(4)]  # every cell ties: cell (0, 0) is outside the box
    assert localise(flat, BOX, IMAGE)["pointing_game"] == 0.0
    assert localise(flat, [0, 0, 56, 56], IMAGE)["pointing_game"] == 1.0
    tie = torch.zeros(4, 4)
    tie[0, 3] = tie[3, 0] = 2.0  # (0, 3) comes first in raster order and is inside
    assert localise(tie.tolist(), BOX, IMAGE)["pointing_game"] == 1.0
    tie[0, 3] = 0.0
    tie[0, 1] = 2.0  # now (0, 1) comes first: outside
    assert localise(tie.tolist(), BOX, IMAGE)["pointing_game"] == 0.0
    assert localise(flat, BOX, IMAGE)["mass_in_box"] == pytest.approx(0.25)  # a flat map scores the chance


def test_partial_cells_count_by_area_and_negative_values_by_zero():
    # A box covering half of cell (0, 0) of a 2 x 2 map over 100 x 100 px.
    m = [[1.0, -5.0], [1.0, 0.0]]
    v = localise(m, [0, 0, 25, 50], (100, 100))
    assert v["pointing_game"] == 1.0 and v["mass_in_box"] == pytest.approx(0.25)  # 0.5 of 1 of 2
    assert localise([[0.0, -1.0]], [0, 0, 10, 10], (100, 100))["mass_in_box"] == 0.0


def test_non_square_maps_follow_the_image():
    # 2 rows x 4 columns over a 400 x 100 image: cell (1, 3) is [300, 400) x [50, 100).
    overlap = cell_overlap((2, 4), [300, 50, 400, 100], (400, 100))
    assert overlap.shape == (2, 4) and overlap[1, 3] == 1.0 and overlap.sum() == 1.0
    assert localise(_peak(1, 3, (2, 4)), [310, 60, 320, 70], (400, 100))["pointing_game"] == 1.0
    assert localise(_peak(0, 3, (2, 4)), [310, 60, 320, 70], (400, 100))["pointing_game"] == 0.0


def test_metrics_sum_over_samples_and_are_registered():
    names = get_registry().names("metric")
    assert {"pointing_game", "mass_in_box"} <= set(names)
    pg, mb = PointingGame(), MassInBox()
    maps = [_peak(0, 3), _peak(3, 0)]
    for m in (pg, mb):
        m.update(maps, [BOX, BOX], [IMAGE, IMAGE])
    assert float(pg.compute()["pointing_game"]) == 0.5 and float(mb.compute()["mass_in_box"]) == 0.5
    assert float(mb.compute()["mass_chance"]) == 0.25


@pytest.mark.parametrize(
    "m, box, size, match",
    [
        ([1.0, 2.0], BOX, IMAGE, "shape"),
        ([[float("nan")]], BOX, IMAGE, "NaN"),
        ([[1.0]], [300, 0, 400, 10], IMAGE, "no area"),
        ([[1.0]], [0, 0, 10], IMAGE, r"\[x0, y0, x1, y1\]"),
        ([[1.0]], BOX, (0, 10), "image size"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_map(m, box, size, match):
    with pytest.raises(ValueError, match=match) as e:
        localise(m, box, size, "sample 'q7'")
    assert str(e.value).startswith("sample 'q7':") and "\n" not in str(e.value)


def test_run_records_are_scored_per_map_source_and_size():
    def record(i, m, bucket, box=BOX):
        meta = {"target_box": box, "image_size": list(IMAGE), "size_bucket": bucket, "vicrop": {"box": [0, 0, 9, 9], "map": m}}
        return {"id": f"q{i}", "meta": meta, "choices": {}, "error": None}

    records = [record(0, _peak(0, 3), "large"), record(1, _peak(3, 0), "small"), record(2, [[float("inf")]], "small"),
               record(3, _peak(0, 3), None, box=None), {"id": "e", "error": "boom", "meta": {}}]  # fmt: skip
    assert set(record_maps(records[0])) == {"meta.vicrop.map"}
    scores = localisation_scores(records)
    entry = scores["meta.vicrop.map"]
    assert entry["n"] == 2 and entry["pointing_game"] == 0.5 and entry["invalid"] == 1
    assert list(entry["by_size"]) == ["small", "large"] and entry["by_size"]["large"]["mass_in_box"] == 1.0
    assert localisation_scores([{"id": "x", "meta": {"type": "colour"}}]) == {}


def test_top_cell_lands_on_the_target_another_object_or_elsewhere():
    other = [0, 112, 112, 224]  # the bottom-left quarter
    assert top_cell_lands(_peak(0, 3), BOX, [other], IMAGE) == "target"
    assert top_cell_lands(_peak(3, 0), BOX, [other], IMAGE) == "other object"
    assert top_cell_lands(_peak(3, 3), BOX, [other], IMAGE) == "elsewhere"
    # A cell inside both boxes counts for the target; a flat map points at the top-left cell.
    assert top_cell_lands(_peak(1, 1), [0, 0, 112, 112], [[0, 0, 224, 224]], IMAGE) == "target"
    assert top_cell_lands([[0.0] * 4] * 4, BOX, [other], IMAGE) == "elsewhere"
    with pytest.raises(ValueError, match="scene 7"):
        top_cell_lands([[float("nan")]], BOX, [], IMAGE, where="scene 7")
