"""PAI: the amplified scores by hand, its settings, then its recipes end to end on every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mllm_refine.components import AttentionRow, ModelInfo
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.parts import ConflictError
from mllm_refine.recipes import load_recipe
from mllm_refine_plugins.pai import PAIFilter, amplify

ROOT = Path(__file__).resolve().parents[2]
INFO = ModelInfo(num_layers=8, num_heads=2, num_kv_heads=2, hidden_size=8, vocab_size=5, family="test")


def test_amplify_by_hand():
    scores = torch.tensor([[[2.0, -1.0, 3.0, -4.0], [0.5, 0.0, -2.5, 1.0]]])  # (B=1, H=2, K=4)
    image = torch.tensor([[False, True, True, False]])
    out = amplify(scores, image, 0.2)
    # Image keys 1, 2: s + 0.2 |s| -> -1 + 0.2 = -0.8, 3 + 0.6 = 3.6, 0 -> 0, -2.5 + 0.5 = -2.0.
    expected = torch.tensor([[[2.0, -0.8, 3.6, -4.0], [0.5, 0.0, -2.0, 1.0]]])
    torch.testing.assert_close(out, expected)


def test_filter_raises_the_image_share_of_each_row():
    f = PAIFilter()
    f.setup(INFO)
    scores = torch.tensor([[[1.0, -0.5, 2.0, 0.3]], [[0.0, 1.5, -1.0, 0.2]]])  # (B=2, H=1, K=4)
    image = torch.tensor([[False, True, True, False], [False, False, True, True]])
    row = AttentionRow(layer=3, step=0, key_valid=torch.ones(2, 4, dtype=torch.bool), image_keys=image)
    before = (torch.softmax(scores, -1) * image[:, None]).sum(-1)  # (B, H)
    after = (torch.softmax(f.scores(scores, row), -1) * image[:, None]).sum(-1)
    assert (after > before).all()


def test_default_blocks_and_settings():
    f = PAIFilter()
    f.setup(INFO)
    assert f.active_layers() == [3, 4, 5, 6, 7, 8]  # PAI's layers 2..31 of 32, counted from 0
    g = PAIFilter(layers=[2, -1])
    g.setup(INFO)
    assert g.active_layers() == [2, 8]
    off = PAIFilter(alpha=0.0)
    off.setup(INFO)
    assert off.active_layers() == []
    with pytest.raises(ValueError, match="alpha: -0.1 must be >= 0"):
        PAIFilter(alpha=-0.1).setup(INFO)
    with pytest.raises(ConflictError, match="head_filter 'pai': listed twice"):
        Parts(head_filters=[PAIFilter(), PAIFilter(alpha=0.5)]).check()


@pytest.mark.parametrize("recipe", ["pai", "pai_dualpd_layer"])
def test_recipes_end_to_end(tiny, samples, recipe):
    _, model, processor = tiny
    parts = load_recipe(ROOT / "recipes" / f"{recipe}.yaml").parts
    decoder = Decoder(model, processor, parts, DecodeConfig(max_new_tokens=6))
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert [p.choices for p in batched] == [p.choices for p in single]
    vanilla = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=6)).generate(samples)
    assert [p.tokens for p in batched] != [p.tokens for p in vanilla]
