"""Contrastive attention: I_A and i* by hand, the masking filter on small rows, then end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mllm_refine.components import AttentionRow, HeadFilter, LogitCombiner, ModelInfo, Needs
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.parts import ConflictError
from mllm_refine.functional import contrastive_map, head_mean_map
from mllm_refine.recipes import load_recipe
from mllm_refine.testing.choices import same_choices
from mllm_refine_plugins.contrastive_attention import ContrastiveAttentionMask, lowest

ROOT = Path(__file__).resolve().parents[2]


def _info(L: int, family: str = "llava") -> ModelInfo:
    return ModelInfo(num_layers=L, num_heads=2, num_kv_heads=2, hidden_size=8, vocab_size=5, family=family)


def test_contrastive_map_by_hand():
    final = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])  # (B=2, I=3): Abar_k
    abar = {
        2: final.clone(),  # Hellinger 0 for both samples
        3: torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]),  # sample 1: sqrt((sqrt(.2) - 1)^2 + .3 + .5) / sqrt(2)
        4: torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]]),  # sample 0: sqrt(.5 + .5) / sqrt(2)
        6: final,
    }
    contrast, i_star = contrastive_map(abar, [2, 3, 4], 6)
    assert i_star.tolist() == [4, 3]
    torch.testing.assert_close(contrast[0], torch.tensor([0.5, 0.0, -0.5]))  # Abar_6 - Abar_4
    torch.testing.assert_close(contrast[1], torch.tensor([-0.8, 0.3, 0.5]))  # Abar_6 - Abar_3
    _, first = contrastive_map(abar, [2, 4], 6)
    assert first.tolist() == [4, 2]  # sample 1: both distances 0, the first fusion block wins


def test_head_mean_map_renormalises_each_head():
    attn = torch.tensor([[[0.2, 0.2, 0.0], [0.1, 0.3, 0.9]]])  # (B=1, H=2, I=3), slot 2 is padding
    slots = torch.tensor([[True, True, False]])
    torch.testing.assert_close(head_mean_map(attn, slots), torch.tensor([[0.375, 0.625, 0.0]]))


@pytest.mark.parametrize(
    "L, family, fusion, review",
    [
        (32, "llava", [2, 4, 8, 11, 12, 13], 29),
        (32, "qwen2_vl", [2, 4, 8, 11, 12, 13], 32),
        (28, "qwen2_5_vl", [2, 4, 7, 10, 11], 28),  # round(b * 28 / 32), half to even
        (6, "llava_next", [1, 2], 5),
    ],
)
def test_default_blocks_scale_with_depth(L, family, fusion, review):
    f = ContrastiveAttentionMask()
    f.setup(_info(L, family))
    assert (f.S, f.k) == (fusion, review)
    assert f.active_layers() == [review] and f.needs().attention == frozenset(fusion)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fusion: blocks \\[3, 5\\] must be .* before the review block 4"):
        ContrastiveAttentionMask(fusion=[3, 5], review=4).setup(_info(8))
    with pytest.raises(ValueError, match="ratio"):
        ContrastiveAttentionMask(ratio=1.5).setup(_info(8))
    noop = ContrastiveAttentionMask(weight=1.0)
    noop.setup(_info(8))
    assert noop.active_layers() == []
    with pytest.raises(ConflictError, match="head_filter 'contrastive_attention': listed twice"):
        Parts(head_filters=[ContrastiveAttentionMask(), ContrastiveAttentionMask()]).check()


def _row(probs_keys: int, fusion_attn: dict[int, torch.Tensor], index, slots, layer: int = 4) -> AttentionRow:
    B = index.shape[0]
    image = torch.zeros(B, probs_keys, dtype=torch.bool)
    image.scatter_(1, index, slots)
    return AttentionRow(
        layer=layer, step=0, key_valid=torch.ones(B, probs_keys, dtype=torch.bool), image_keys=image,
        image_index=index, image_slots=slots, attention=fusion_attn,
    )  # fmt: skip


def test_mask_by_hand():
    f = ContrastiveAttentionMask(fusion=[2], review=4, ratio=0.5, weight=0.0)
    f.setup(_info(4))
    # Keys: 0 text, 1..3 image, 4 text. Sample 1 has two image tokens (keys 1, 2); its slot 2 pads.
    index = torch.tensor([[1, 2, 3], [1, 2, 0]])
    slots = torch.tensor([[True, True, True], [True, True, False]])
    probs = torch.tensor(
        [
            [[0.1, 0.4, 0.2, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]],
            [[0.2, 0.3, 0.3, 0.1, 0.1], [0.1, 0.1, 0.5, 0.2, 0.1]],
        ]
    )  # (B=2, H=2, K=5)
    early = torch.tensor([[[0.2, 0.2, 0.4], [0.2, 0.2, 0.4]], [[0.3, 0.1, 0.0], [0.3, 0.1, 0.0]]])  # (B, H, I)
    row = _row(5, {2: early}, index, slots)
    out = f.probs(probs, row)
    # Sample 0: Abar_4 = mean([.5, .25, .25], [1/3] * 3) = [5/12, 7/24, 7/24]; Abar_2 = [.25, .25, .5];
    # I_A = [1/6, 1/24, -5/24]: round(0.5 * 3) = 2 lowest -> keys 3 and 2 masked.
    # Sample 1: Abar_4 = mean([.5, .5], [1/6, 5/6]) = [1/3, 2/3]; Abar_2 = [.75, .25]; I_A = [-5/12, 5/12]:
    # round(0.5 * 2) = 1 lowest -> key 1 masked.
    expected = torch.tensor(
        [
            [[0.1, 0.4, 0.0, 0.0, 0.1], [0.2, 0.2, 0.0, 0.0, 0.2]],
            [[0.2, 0.0, 0.3, 0.1, 0.1], [0.1, 0.0, 0.5, 0.2, 0.1]],
        ]
    )
    torch.testing.assert_close(out, expected / expected.sum(-1, keepdim=True))
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 2))
    assert f.report(row.state) == {"i_star": [2, 2]}
    half = ContrastiveAttentionMask(fusion=[2], review=4, ratio=0.5, weight=0.5)
    half.setup(_info(4))
    out = half.probs(probs, _row(5, {2: early}, index, slots))
    down = probs[0, 0] * torch.tensor([1.0, 1.0, 0.5, 0.5, 1.0])
    torch.testing.assert_close(out[0, 0], down / down.sum())


class RowRecorder(HeadFilter):
    """Identity filter at one block: keeps what the engine shows it of earlier blocks."""

    name = "row_recorder"

    def __init__(self, layer: int, earlier: set[int]):
        self.layer, self.earlier, self.seen = layer, earlier, []

    def active_layers(self) -> list[int]:
        return [self.layer]

    def needs(self) -> Needs:
        return Needs(attention=frozenset(self.earlier | {self.layer + 1}))

    def probs(self, probs, row):
        self.seen.append({l: a.clone() for l, a in row.attention.items()})
        return probs


class StepRecorder(LogitCombiner):
    name = "step_recorder"
    uses_layer = False

    def __init__(self, layers: set[int]):
        self.layers, self.steps = layers, []

    def combine(self, view, layer):
        self.steps.append({l: view.attention(l, renormalize=False) for l in self.layers})
        return view.logits


def test_filters_see_this_pass_of_earlier_blocks_only(tiny, samples):
    _, model, processor = tiny
    rec, steps = RowRecorder(3, {1, 2}), StepRecorder({1, 2})
    parts = Parts(head_filters=[rec], logit_combiner=steps)
    Decoder(model, processor, parts, DecodeConfig(max_new_tokens=3)).generate(samples)
    assert len(rec.seen) == len(steps.steps) == 3
    for seen, step in zip(rec.seen, steps.steps):
        assert set(seen) == {1, 2}  # block 4 comes later in the pass
        for l in (1, 2):
            torch.testing.assert_close(seen[l], step[l])


def _decoder(model, processor, parts: Parts, n: int = 6) -> Decoder:
    return Decoder(model, processor, parts, DecodeConfig(max_new_tokens=n))


def test_recipe_end_to_end(tiny, samples):
    _, model, processor = tiny
    decoder = _decoder(model, processor, load_recipe(ROOT / "recipes" / "contrastive_attention.yaml").parts)
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert all(same_choices(b.choices, s.choices) for b, s in zip(batched, single, strict=True))
    assert all(p.choices["contrastive_attention.map"] for p in batched)
    assert all(p.choices["contrastive_attention.i_star"] in decoder.parts.head_filters[0].S for p in batched)
    vanilla = _decoder(model, processor, Parts()).generate(samples)
    assert [p.tokens for p in batched] != [p.tokens for p in vanilla]


def test_report_lays_i_a_on_the_image_grid():
    f = ContrastiveAttentionMask(fusion=[2], review=4, ratio=0.5, weight=0.0)
    f.setup(_info(4))
    assert f.needs().image_grid  # the reported map needs the grid
    index = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    slots = torch.ones(2, 4, dtype=torch.bool)
    probs = torch.full((2, 1, 6), 1 / 6)  # (B, H=1, K): flat at block k
    early = torch.tensor([[[0.4, 0.2, 0.2, 0.2]], [[0.1, 0.1, 0.1, 0.7]]])  # (B, H, I) at block 2
    row = _row(6, {2: early}, index, slots)
    row.image_grid = [[(2, 2)], [(1, 4)]]
    f.probs(probs, row)
    # I_A = 1/4 - Abar_2, as (rows, cols) of each sample's grid.
    report = f.report(row.state)
    f64 = torch.float64
    torch.testing.assert_close(torch.tensor(report["map"][0], dtype=f64), torch.tensor([[-0.15, 0.05], [0.05, 0.05]], dtype=f64))
    torch.testing.assert_close(torch.tensor(report["map"][1], dtype=f64), torch.tensor([[0.15, 0.15, 0.15, -0.45]], dtype=f64))
    assert report["i_star"] == [2, 2] and f.report(row.state) == report and f.report({}) == {}


def test_lowest_by_hand_ties_go_to_the_first_slot_and_padding_ranks_last():
    values = torch.tensor([[0.3, 0.1, 0.1, 0.5, -9.0], [0.1, 0.1, 0.1, 0.2, 0.0]])  # (B=2, I=5)
    slots = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    # Sample 0: 4 real slots -> 2 lowest, 0.1 and 0.1 (the padding slot's -9 never counts).
    # Sample 1: 5 slots -> round(2.5) = 2 (half to even): 0.0 at slot 4, then the first 0.1.
    assert lowest(values, slots, 0.5).tolist() == [[False, True, True, False, False], [True, False, False, False, True]]
    assert lowest(values, slots, 0.0).sum() == 0 and lowest(values, slots, 1.0).tolist() == slots.tolist()
