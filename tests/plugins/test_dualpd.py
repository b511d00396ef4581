"""DualPD parts against hand computations on small tensors, then end to end on a tiny model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mllm_refine.components import AttentionRow, ModelInfo
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.functional import hellinger
from mllm_refine.testing.tiny_models import tiny_llava
from mllm_refine_plugins.dualpd import HeadNormFilter, HellingerShiftSelector
from mllm_refine_plugins.layer_contrast import LayerContrastCombiner

INFO = ModelInfo(num_layers=8, num_heads=4, num_kv_heads=4, hidden_size=8, vocab_size=5, family="test")


def test_hellinger_by_hand():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.0, 0.5, 0.5])
    # sqrt terms: (0.7071-0)^2 + 0 + (0-0.7071)^2 = 1.0 -> sqrt(1) / sqrt(2)
    assert hellinger(p, q).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert hellinger(p, p).item() == pytest.approx(0.0, abs=1e-7)
    disjoint = hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert disjoint.item() == pytest.approx(1.0, abs=1e-6)


class FakeView:
    """The parts of StepView the selector reads: per-layer (B, H, I) attention and the samples
    without an image (None when every sample has one, as the engine gives it)."""

    def __init__(self, attn: dict[int, torch.Tensor], image_mask: torch.Tensor):
        self._attn = attn
        missing = ~image_mask.any(1)  # (B,)
        self.no_image = missing if missing.any() else None

    def attention(self, layer: int, renormalize: bool = True) -> torch.Tensor:
        return self._attn[layer]

    def attentions(self, layers: list[int], renormalize: bool = True) -> torch.Tensor:
        return torch.stack([self._attn[l] for l in layers], dim=1)  # (B, N, H, I)


def test_selector_default_candidates_and_needs():
    s = HellingerShiftSelector()
    s.setup(INFO)
    assert s.candidates() == [2, 3, 4, 5, 6, 7]  # 2 .. 8 - max(1, 8 // 8)
    assert s.needs().attention == frozenset(range(1, 8))
    with pytest.raises(ValueError, match="layers: layer 9 is outside 2..8"):
        HellingerShiftSelector(layers=[9]).setup(INFO)


def _jumps() -> dict[int, torch.Tensor]:
    """(B=2, H=4, I=2) attention of blocks 1..4: sample 0 jumps between blocks 1 and 2, sample 1
    between blocks 3 and 4."""
    flat = torch.full((2, 4, 2), 0.5)  # (B, H, I): uniform over two image tokens
    left = torch.tensor([1.0, 0.0]).expand(2, 4, 2)
    right = torch.tensor([0.0, 1.0]).expand(2, 4, 2)
    return {
        1: torch.stack([left[0], flat[1]]),
        2: torch.stack([right[0], flat[1]]),
        3: torch.stack([right[0], flat[1]]),
        4: torch.stack([right[0], left[1]]),
    }


def test_selector_picks_largest_shift_per_sample():
    s = HellingerShiftSelector(layers=[2, 3, 4])
    s.setup(INFO)
    attn = _jumps()
    view = FakeView(attn, torch.ones(2, 2, dtype=torch.bool))
    shifts = s.shifts(view)  # (B, 3) for candidates 2, 3, 4
    h_flat_left = math.sqrt((math.sqrt(0.5) - 1) ** 2 + 0.5) / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, h_flat_left]])
    torch.testing.assert_close(shifts, expected, atol=1e-6, rtol=0)
    assert s.select(view).tolist() == [2, 4]
    no_image = FakeView(attn, torch.tensor([[True, True], [False, False]]))
    assert s.select(no_image).tolist() == [2, -1]


def test_selector_with_candidates_apart():
    s = HellingerShiftSelector(layers=[2, 4])  # blocks 1, 2, 3, 4 read; no offset from the argmax
    s.setup(INFO)
    attn = _jumps()
    view = FakeView(attn, torch.ones(2, 2, dtype=torch.bool))
    h_flat_left = math.sqrt((math.sqrt(0.5) - 1) ** 2 + 0.5) / math.sqrt(2)
    torch.testing.assert_close(s.shifts(view), torch.tensor([[1.0, 0.0], [0.0, h_flat_left]]), atol=1e-6, rtol=0)
    assert s.select(view).tolist() == [2, 4]
    no_image = FakeView(attn, torch.tensor([[False, False], [True, True]]))
    assert s.select(no_image).tolist() == [-1, 4]


def _row(B: int, K: int, valid: torch.Tensor | None = None) -> AttentionRow:
    valid = torch.ones(B, K, dtype=torch.bool) if valid is None else valid
    return AttentionRow(layer=1, step=0, key_valid=valid, image_keys=torch.zeros(B, K, dtype=torch.bool))


def test_head_filter_decays_lowest_norm_heads_by_hand():
    f = HeadNormFilter(ratio=0.25, gamma=0.5)  # round(0.25 * 4) = 1 head per block
    f.setup(INFO)
    scores = torch.tensor(
        [
            [[3.0, 4.0], [1.0, 0.0], [2.0, 2.0], [0.0, 5.0]],  # norms 5, 1, 2.83, 5 -> head 1
            [[0.1, 0.1], [1.0, 0.0], [2.0, 2.0], [0.0, 5.0]],  # norms 0.14, 1, 2.83, 5 -> head 0
        ]
    )  # (B=2, H=4, K=2)
    row = _row(2, 2)
    out = f.scores(scores, row)
    expected = scores.clone()
    expected[0, 1] *= 0.5
    expected[1, 0] *= 0.5
    torch.testing.assert_close(out, expected)
    assert f.report(row.state) == {"heads": [{1: [1]}, {1: [0]}]}
    assert f.report(row.state) == f.report(row.state) and f.report({}) == {}  # it reads, never resets


def test_head_filter_norm_ignores_padding_keys():
    f = HeadNormFilter(ratio=0.25, gamma=0.5)
    f.setup(INFO)
    scores = torch.tensor([[[9.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]]])  # key 0 is padding
    valid = torch.tensor([[False, True]])
    out = f.scores(scores, _row(1, 2, valid))
    assert out[0, 0, 1] == 0.5  # head 0 has the lowest norm once the padding key is ignored


def test_head_filter_noop_settings_act_nowhere():
    for f in (HeadNormFilter(ratio=0.0), HeadNormFilter(gamma=1.0)):
        f.setup(INFO)
        assert f.active_layers() == []
    with pytest.raises(ValueError, match="ratio"):
        HeadNormFilter(ratio=1.5).setup(INFO)


def test_layer_contrast_by_hand():
    c = LayerContrastCombiner(alpha=0.5)
    c.setup(INFO)
    final = torch.tensor([[2.0, 1.5, -3.0], [0.0, 0.0, 0.0]])  # (B=2, V=3)
    early = torch.tensor([[1.0, 2.0, 0.0], [5.0, 1.0, 0.0]])
    view = SimpleNamespace(logits=final, lens_at=lambda layer, final_norm, fill=True: early)
    out = c.combine(view, torch.tensor([3, -1]))
    # Sample 0: p = softmax(final) ~ [0.62, 0.38, 0.004]; plausible where p >= 0.5 * 0.62 -> tokens 0, 1.
    inf = float("-inf")
    torch.testing.assert_close(out[0], torch.tensor([1.0, -0.5, inf]))
    torch.testing.assert_close(out[1], final[1])  # no selected layer: final logits
    c2 = LayerContrastCombiner(alpha=0.0, space="log_softmax")
    c2.setup(INFO)
    out2 = c2.combine(view, torch.tensor([3, 3]))
    torch.testing.assert_close(out2, final.log_softmax(-1) - early.log_softmax(-1))


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def _dualpd() -> Parts:
    return Parts(
        layer_selector=HellingerShiftSelector(),
        head_filters=[HeadNormFilter()],
        logit_combiner=LayerContrastCombiner(),
    )


def test_dualpd_changes_output_and_reports_choices(llava, samples):
    model, processor = llava
    cfg = DecodeConfig(max_new_tokens=6)
    vanilla = Decoder(model, processor, Parts(), cfg).generate(samples)
    dualpd = Decoder(model, processor, _dualpd(), cfg).generate(samples)
    assert [p.tokens for p in vanilla] != [p.tokens for p in dualpd]
    L = model.config.text_config.num_hidden_layers
    for p in dualpd:
        assert len(p.choices["layer"]) == len(p.tokens)
        assert all(2 <= layer <= L for layer in p.choices["layer"])
        heads = p.choices["head_norm_filter.heads"]
        assert sorted(heads) == list(range(1, L + 1))
        assert all(len(h) == 1 for h in heads.values())  # round(0.15 * 4 heads) = 1


def test_dualpd_batch_of_4_equals_4_of_1(llava, samples):
    model, processor = llava
    decoder = Decoder(model, processor, _dualpd(), DecodeConfig(max_new_tokens=6))
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert [p.choices for p in batched] == [p.choices for p in single]


def test_each_part_alone_runs(llava, samples):
    model, processor = llava
    cfg = DecodeConfig(max_new_tokens=4)
    heads_only = Decoder(model, processor, Parts(head_filters=[HeadNormFilter()]), cfg).generate(samples)
    layer_only = Parts(layer_selector=HellingerShiftSelector(), logit_combiner=LayerContrastCombiner())
    contrast = Decoder(model, processor, layer_only, cfg).generate(samples)
    assert all(p.tokens for p in heads_only) and all("layer" in p.choices for p in contrast)
