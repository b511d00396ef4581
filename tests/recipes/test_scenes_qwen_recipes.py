"""``recipes/scenes_qwen/``: every shipped recipe, extended onto the Qwen2.5-VL embedded model and
the scenes test split, and nothing else changed but the crop settings this model needs (its
scenes are 224 px, the Qwen crop base; the rel-att block chosen on the train split)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_refine.recipes import load_recipe
from mllm_refine.recipes.loader import resolve_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(p.stem for p in RECIPES.glob("*.yaml"))
ON_THIS_MODEL = {"crop_size": 112, "layer": 9}  # what a crop recipe may set here (docs/results.md)


def refiner_params(recipe) -> list[dict]:
    return [{f.name: getattr(r, f.name) for f in r.params()} for r in recipe.parts.input_refiners]


def test_every_shipped_recipe_has_a_scenes_qwen_one():
    assert sorted(p.stem for p in (RECIPES / "scenes_qwen").glob("*.yaml") if p.stem != "model") == SHIPPED


@pytest.mark.parametrize("stem", SHIPPED)
def test_a_scenes_qwen_recipe_is_its_parent_on_the_qwen_model(stem):
    parent = resolve_recipe(RECIPES / f"{stem}.yaml")[0]
    child = resolve_recipe(RECIPES / "scenes_qwen" / f"{stem}.yaml")[0]
    loaded = load_recipe(str(RECIPES / "scenes_qwen" / f"{stem}.yaml"))  # valid as a whole
    assert child["model"]["path"] == "smollm2-135m-scenes-qwen"
    assert child["data"] == {"name": "easy_vqa_scenes", "split": "test"}
    assert child["name"] == f"{stem}_scenes_qwen"
    for key in set(parent) | set(child):
        if key not in ("model", "data", "decode", "name", "description", "input_refiners"):
            assert child.get(key) == parent.get(key), key
    assert {k: v for k, v in child["decode"].items() if k != "batch_size"} == {k: v for k, v in parent["decode"].items() if k != "batch_size"}
    shipped = load_recipe(str(RECIPES / f"{stem}.yaml"))
    assert [type(r) for r in loaded.parts.input_refiners] == [type(r) for r in shipped.parts.input_refiners]
    for mine, parent_params in zip(refiner_params(loaded), refiner_params(shipped)):
        changed = {k: v for k, v in mine.items() if v != parent_params[k]}
        assert changed.items() <= ON_THIS_MODEL.items(), changed
