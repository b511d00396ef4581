"""VRGA: head statistics, head selection, reference map, focus tokens and grid neighbours, and
the decode-time reweighting by hand; then its recipes end to end on every family."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mllm_refine.components import AttentionRow, HeadFilter, ModelInfo, Needs
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.parts import ConflictError
from mllm_refine.recipes import load_recipe
from mllm_refine_plugins.vrga import (
    VRGAFilter,
    dilate,
    engaged_heads,
    focus_tokens,
    grid_cells,
    reference_map,
    row_stats,
    select_heads,
)

ROOT = Path(__file__).resolve().parents[2]
INFO = ModelInfo(num_layers=8, num_heads=2, num_kv_heads=2, hidden_size=8, vocab_size=5, family="test")
STEPS = 6


def test_row_stats_by_hand():
    probs = torch.tensor([[[0.1, 0.6, 0.2, 0.1], [0.0, 0.5, 0.5, 0.0]]])  # (B=1, H=2, K=4)
    image = torch.tensor([[False, True, True, False]])
    valid = torch.tensor([[False, True, True, True]])  # key 0 is padding
    ratio, entropy = row_stats(probs, image, valid)
    # Head 0: image mean 0.8 / 2 = 0.4 over the mean of 3 valid keys (0.9 / 3 = 0.3) -> 4/3.
    # Head 1: 1.0 / 2 over 1.0 / 3 -> 1.5; image parts [0.75, 0.25] and [0.5, 0.5].
    torch.testing.assert_close(ratio, torch.tensor([[0.4 / 0.3, 1.5]]))
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(entropy, torch.tensor([[h0, math.log(2)]]))


def test_select_heads_by_hand():
    ratio = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.005, 2.0, 3.0, 4.0, 5.0]])  # (B=2, N=5)
    efr = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    early = torch.tensor([True, True, False, False, False])
    visual, background = select_heads(ratio, efr, early, visual_q=0.25, ratio_q=0.75, background_r=0.01)
    # Quantiles (linear, 5 values): 0.25 -> the 2nd smallest, 0.75 -> the 4th.
    # Sample 0: EFR <= 2 at heads 1, 3; R >= 4 at heads 3, 4 -> head 3.
    # Sample 1: EFR <= 2 at heads 0, 1; R >= 4 at heads 3, 4 -> none: fall back to R alone.
    assert visual.tolist() == [[False, False, False, True, False], [False, False, False, True, True]]
    assert background.tolist() == [[False] * 5, [True, False, False, False, False]]  # R < 0.01, early


def test_reference_map_by_hand():
    maps = torch.tensor(
        [[[0.4, 0.4, 0.1, 0.1, 0.0], [0.6, 0.2, 0.1, 0.1, 0.0], [0.1, 0.1, 0.4, 0.4, 0.0]]]
    )  # (B=1, N=3 heads, I=5); slot 4 pads
    slots = torch.tensor([[True, True, True, True, False]])
    visual = torch.tensor([[True, True, False]])
    background = torch.tensor([[False, False, True]])
    ref = reference_map(maps, visual, background, slots, sink=None, norm="sum")
    # mean visual [.5, .3, .1, .1] - background [.1, .1, .4, .4] -> relu [.4, .2, 0, 0] -> /0.6.
    torch.testing.assert_close(ref, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0, 0.0]]))
    # "max": visual [1, .6, .2, .2] - background [.25, .25, 1, 1] -> [.75, .35, 0, 0] -> /1.1.
    ref = reference_map(maps, visual, background, slots, sink=None, norm="max")
    torch.testing.assert_close(ref, torch.tensor([[0.75 / 1.1, 0.35 / 1.1, 0.0, 0.0, 0.0]]))
    # Sinks: the all-head mean of slot 0 is 1.1 / 3 > 1.4 / 4 (sink 1.4 times the uniform 1/4).
    ref = reference_map(maps, visual, background, slots, sink=1.4, norm="sum")
    torch.testing.assert_close(ref, torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]))
    none = reference_map(maps, visual, torch.zeros_like(background), slots, sink=None, norm="sum")
    torch.testing.assert_close(none, torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0]]))  # no background heads


def test_focus_tokens_by_hand():
    ref = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [0.1, 0.6, 0.2, 0.1, 0.0, 0.0]])  # (B=2, I=6)
    slots = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    # Sample 0: ratio = 6 * ref = [3, 1.2, .6, .6, .3, .3], mean 1, population std sqrt(5.34 / 6);
    # threshold 1 + 0.6 * 0.943 = 1.566 -> slot 0 only. Sample 1 (4 tokens): ratio = 4 * ref =
    # [.4, 2.4, .8, .4], std sqrt(2.72 / 4) = 0.82, threshold 1.49 -> slot 1 only.
    got = focus_tokens(ref, slots, focus_std=0.6, min_focus=0)
    assert got.nonzero().tolist() == [[0, 0], [1, 1]]
    got = focus_tokens(ref, slots, focus_std=0.6, min_focus=2)  # at least the 2 largest
    assert got.nonzero().tolist() == [[0, 0], [0, 1], [1, 1], [1, 2]]
    got = focus_tokens(ref, slots, focus_std=0.6, min_focus=10)  # capped by each image's length
    assert got.tolist() == slots.tolist()


def test_grid_cells_and_neighbours_by_hand():
    # Sample 0: one 3 x 4 grid. Sample 1: a 2 x 2 grid, then a 2 x 3 grid with one row-end token
    # after each row (LLaVA-NeXT's newline): tokens 4 5 6 [7] / 8 9 10 [11].
    cells = grid_cells([[(3, 4)], [(2, 2), (2, 3)]], (0, 1), 12)
    assert cells[0, 5].tolist() == [0, 1, 1] and cells[0, 11].tolist() == [0, 2, 3]
    assert cells[1, :4].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    newline = [-1, -1, -1]
    assert cells[1, 4:].tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 2], newline, [1, 1, 0], [1, 1, 1], [1, 1, 2], newline]
    focus = torch.zeros(2, 12, dtype=torch.bool)
    focus[0, 0] = True  # cell (0, 0)
    focus[1, 4] = True  # grid 1, cell (0, 0)
    one = dilate(focus, cells, 1)
    assert one[0].nonzero().flatten().tolist() == [0, 1, 4, 5]  # rows 0-1, cols 0-1
    assert one[1].nonzero().flatten().tolist() == [4, 5, 8, 9]  # not grid 0, not the newlines
    two = dilate(focus, cells, 2)
    assert two[0].nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # rows 0-2, cols 0-2
    assert two[1].nonzero().flatten().tolist() == [4, 5, 6, 8, 9, 10]


def test_reweighting_by_hand():
    f = VRGAFilter(gamma=0.5)
    f.setup(INFO)
    probs = torch.tensor([[[0.05, 0.5, 0.3, 0.05, 0.1], [0.3, 0.1, 0.1, 0.1, 0.4]]])  # (B=1, H=2, K=5)
    image = torch.tensor([[False, True, True, True, False]])
    row = AttentionRow(layer=2, step=1, key_valid=torch.ones(1, 5, dtype=torch.bool), image_keys=image)
    row.state[f"vrga:{id(f)}"] = torch.tensor([[False, False, True, False]])  # prompt of 4 keys: boost key 2
    # Head 0: R = (0.85 / 3) / (1 / 5) = 1.42 > 0.6 and > 0.2 * H (H < ln 3): engaged.
    # Head 1: R = (0.3 / 3) / (1 / 5) = 0.5: not engaged.
    out = f.probs(probs, row)
    boosted = probs[0, 0] * torch.tensor([1.0, 1.0, 1.5, 1.0, 1.0])
    torch.testing.assert_close(out[0, 0], boosted / boosted.sum())
    torch.testing.assert_close(out[0, 1], probs[0, 1])
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 2))
    assert f.probs(probs, AttentionRow(layer=2, step=0, key_valid=row.key_valid, image_keys=image)) is probs


def test_settings_needs_and_conflicts():
    f = VRGAFilter(layers=[2, 3])
    f.setup(INFO)
    assert f.active_layers() == [2, 3, 8]  # the last block runs the prefill analysis
    assert f.needs() == Needs(prefill_rows=frozenset(range(1, 8)), image_grid=True)
    assert f._early == [1, 2]  # 1 .. max(1, 8 // 4)
    off = VRGAFilter(gamma=0.0)
    off.setup(INFO)
    assert off.active_layers() == []
    with pytest.raises(ValueError, match="ratio_q: 1.5 is outside 0..1"):
        VRGAFilter(ratio_q=1.5).setup(INFO)
    with pytest.raises(ConflictError, match="head_filter 'vrga': listed twice"):
        Parts(head_filters=[VRGAFilter(), VRGAFilter()]).check()


class GridRecorder(HeadFilter):
    name = "grid_recorder"

    def __init__(self):
        self.grids = []

    def active_layers(self) -> list[int]:
        return [1]

    def needs(self) -> Needs:
        return Needs(image_grid=True)

    def probs(self, probs, row):
        self.grids.append(row.image_grid)
        return probs


def test_filters_get_each_samples_grid(tiny, samples):
    _, model, processor = tiny
    rec = GridRecorder()
    decoder = Decoder(model, processor, Parts(head_filters=[rec]), DecodeConfig(max_new_tokens=1))
    decoder.generate(samples)
    assert rec.grids == [decoder.adapter.image_grid(decoder.adapter.prepare(samples))]


@pytest.mark.parametrize("recipe", ["vrga", "dualpd_vrga"])
def test_recipes_end_to_end(tiny, samples, recipe):
    _, model, processor = tiny
    parts = load_recipe(ROOT / "recipes" / f"{recipe}.yaml").parts
    decoder = Decoder(model, processor, parts, DecodeConfig(max_new_tokens=STEPS))
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert [p.choices for p in batched] == [p.choices for p in single]
    assert all(p.choices["vrga.focus"] and p.choices["vrga.visual_heads"] for p in batched)
    vanilla = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=STEPS)).generate(samples)
    assert [p.tokens for p in batched] != [p.tokens for p in vanilla]


def test_engaged_heads_agree_with_row_stats_on_padded_rows():
    torch.manual_seed(0)
    B, H, K = 3, 6, 40
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[1, :7], valid[2, :15] = False, False  # left padding
    image = torch.zeros(B, K, dtype=torch.bool)
    image[:, 18:34] = True
    scores = torch.randn(B, H, K) * 3
    scores[:, 0, 18:34] += 6  # a head that looks at the image
    scores[:, 1, 18:34] = float("-inf")  # a head with no image mass
    probs = torch.softmax(scores.masked_fill(~valid[:, None], float("-inf")), -1)
    ratio, entropy = row_stats(probs, image, valid)
    expected = (ratio > 0.6) & (ratio > 0.2 * entropy)
    share = valid.sum(1, keepdim=True).float() / image.sum(1, keepdim=True).float()
    got = engaged_heads(probs, image.float()[:, :, None], share, 0.6, 0.2)
    assert got.tolist() == expected.tolist()
    assert got[:, 0].all() and not got[:, 1].any()
