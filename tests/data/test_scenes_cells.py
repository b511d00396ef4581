"""``cell_labels``: which object each cell of a grid over the scene shows, against a hand count."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mllm_refine.data import scenes
from mllm_refine.data.scenes import Scene, SceneObject


def _solid(scene: Scene, obj: SceneObject) -> Image.Image:
    x0, y0, x1, y1 = obj.box
    return Image.new("L", (x1 - x0, y1 - y0), 255)  # alpha 1 over the whole box


def test_cells_against_a_hand_count(monkeypatch):
    monkeypatch.setattr(scenes, "placed_alpha", _solid)
    objects = (
        SceneObject("red", "circle", 0, (0, 0, 20, 16)),  # cell (0,0) whole; (0,1): 4 x 16 = 64 px, 25 % of a cell
        SceneObject("blue", "triangle", 0, (40, 40, 44, 44)),  # 16 px in cell (2,2): 6 % of the cell, all of itself
        SceneObject("teal", "rectangle", 0, (30, 56, 34, 60)),  # 8 px in cells (3,1) and (3,2): half of itself each
        SceneObject("gray", "circle", 0, (60, 0, 64, 2)),  # 8 px in cell (0,3): 3 % of the cell, all of itself
    )
    scene = Scene("test", 0, 64, (255, 255, 255), objects)  # 4 x 4 cells of 16 px (256 px each)
    want = np.full((4, 4), -1)
    want[0, 0] = want[0, 1] = 0
    want[2, 2] = 1
    want[3, 1] = want[3, 2] = 2
    want[0, 3] = 3
    assert (scenes.cell_labels(scene, 4) == want).all()
    # an object below both thresholds in a cell leaves it background
    assert scenes.cell_labels(scene, 4, min_cell=0.3, min_object=0.6)[0, 1] == -1
    assert scenes.cell_labels(scene, 4, min_cell=0.3, min_object=0.6)[3, 1] == -1


def test_cells_of_a_rendered_scene_sit_on_its_objects():
    scene = scenes.make_scene("test", 2)
    labels = scenes.cell_labels(scene, 8)  # 28 px cells of the 224 canvas
    for k, obj in enumerate(scene.objects):
        rows, cols = np.nonzero(labels == k)
        assert len(rows), f"object {k} names no cell"
        x0, y0, x1, y1 = obj.box
        assert ((cols + 1) * 28 > x0).all() and (cols * 28 < x1).all() and ((rows + 1) * 28 > y0).all() and (rows * 28 < y1).all()
