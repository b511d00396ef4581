"""Every input-level recipe end to end on a tiny model of every family: batch 4 == 4 x batch 1,
sampled recipes too (each sample draws from its own seeded stream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mllm_refine.engine import Decoder
from mllm_refine.recipes import load_recipe
from mllm_refine.testing import TINY_RUN
from tests.conftest import make_samples

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
NAMES = ["vicrop_rel", "vicrop_grad", "vicrop_puregrad", "contrastive_crop", "vcd", "vcd_greedy", "vicrop_dualpd", "vicrop_deco"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_batch_of_four_equals_four_of_one(tiny, name):
    _, model, processor = tiny
    recipe = load_recipe(RECIPES / f"{name}.yaml", [*TINY_RUN, "decode.max_new_tokens=2"])
    decoder = Decoder(model, processor, recipe.parts, recipe.decode)
    samples = make_samples(4)
    four = decoder.generate(samples)
    ones = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in four] == [p.tokens for p in ones]
    refiner = next(iter(recipe.parts.input_refiners), None)
    if refiner is not None:
        for p, q, s in zip(four, ones, samples):
            got, alone = p.meta[refiner.name], q.meta[refiner.name]
            assert (got["box"], got["ratio"]) == (alone["box"], alone["ratio"])
            torch.testing.assert_close(torch.tensor(got["map"]), torch.tensor(alone["map"]), rtol=1e-4, atol=1e-6)
            x0, y0, x1, y1 = got["box"]
            assert 0 <= x0 < x1 <= s.images[0].width and 0 <= y0 < y1 <= s.images[0].height
            assert len(p.meta[refiner.name]["map"]) >= 1


def test_gradient_maps_run_through_the_predict_loop(tmp_path):
    """Lightning's inference mode would forbid the backward pass of grad-att and pure-grad."""
    from mllm_refine.cli import main

    for name in ("vicrop_grad", "vicrop_puregrad"):
        out = tmp_path / name
        args = ["run", str(RECIPES / f"{name}.yaml"), "-o", str(out), *TINY_RUN, "data.n=2", "decode.max_new_tokens=2"]
        assert main(args) == 0
        assert all(json.loads(line)["error"] is None for line in (out / "predictions.jsonl").read_text().splitlines())
