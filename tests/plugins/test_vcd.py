"""VCD: noise schedule and combination by hand, the lockstep branch engine, end to end."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from mllm_refine.components import HeadFilter, LogitCombiner, Needs
from mllm_refine.components.branch import Branch
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.testing.tiny_models import tiny_llava, tiny_qwen2_vl
from mllm_refine_plugins.vcd import VCDCombiner, alpha_bar, diffuse
from tests.conftest import make_samples


def test_alpha_bar_by_hand():
    T = 1000
    prod_sig, prod_lin = 1.0, 1.0
    for s in range(501):
        x = -6 + 12 * s / (T - 1)
        prod_sig *= 1 - (1 / (1 + math.exp(-x)) * (0.5e-2 - 1e-5) + 1e-5)
        prod_lin *= 1 - (1e-4 + (0.02 - 1e-4) * s / (T - 1))
    assert alpha_bar(T, "sigmoid")[500].item() == pytest.approx(prod_sig, rel=1e-12)
    assert alpha_bar(T, "linear")[500].item() == pytest.approx(prod_lin, rel=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        alpha_bar(T, "cosine")


def test_diffuse_by_hand_and_tile_by_tile():
    abar = alpha_bar(1000, "sigmoid")
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a = abar[500].item()
    expected = math.sqrt(a) * x + math.sqrt(1 - a) * eps
    torch.testing.assert_close(diffuse(x, 500, abar, torch.Generator().manual_seed(7)), expected)
    tiles = torch.randn(3, 3, 4, 4, dtype=torch.float64)  # a padded tile at the end never shifts the others
    two = diffuse(tiles[:2], 500, abar, torch.Generator().manual_seed(1))
    three = diffuse(tiles, 500, abar, torch.Generator().manual_seed(1))
    torch.testing.assert_close(three[:2], two)


class FakeView:
    def __init__(self, logits, noisy):
        self.logits, self._noisy = logits, noisy

    def branch_logits(self, name):
        assert name == "noisy"
        return self._noisy


def test_combination_by_hand():
    vcd = VCDCombiner(alpha=1.0, beta=0.1)
    z = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    zn = torch.tensor([[1.0, 2.0, 0.0, -3.0]])
    out = vcd.combine(FakeView(z, zn), None)
    # plausible: p_t >= 0.1 p_max <=> z_t >= 2 + ln 0.1 = -0.303 -> tokens 0, 1, 3
    expected = torch.tensor([[3.0, 0.0, float("-inf"), 4.0]])  # 2z - zn
    torch.testing.assert_close(out, expected)
    keep_all = VCDCombiner(alpha=0.5, beta=0.0).combine(FakeView(z, zn), None)
    torch.testing.assert_close(keep_all, 1.5 * z - 0.5 * zn)


@dataclass
class EchoBranch(LogitCombiner):
    """A branch fed the main inputs unchanged: its logits must be the main logits."""

    name = "echo_branch"
    uses_layer = False

    def needs(self) -> Needs:
        return Needs(branches=frozenset({Branch("same", lambda inputs, samples, adapter: inputs)}))

    def combine(self, view, layer):
        self.seen = getattr(self, "seen", []) + [(view.logits, view.branch_logits("same"))]
        return view.logits


@dataclass
class CountingFilter(HeadFilter):
    name = "counting_filter"

    def active_layers(self):
        return [2]

    def scores(self, scores, row):
        self.calls = getattr(self, "calls", 0) + 1
        return scores


@pytest.mark.parametrize("factory", [tiny_llava, tiny_qwen2_vl])
def test_branch_runs_in_lockstep_without_the_main_probes(factory):
    model, processor = factory()
    echo, counting = EchoBranch(), CountingFilter()
    decoder = Decoder(model, processor, Parts(logit_combiner=echo, head_filters=[counting]), DecodeConfig(max_new_tokens=4))
    preds = decoder.generate(make_samples(3))
    steps = len(echo.seen)
    assert 1 <= steps <= 4 and steps >= max(len(p.tokens) for p in preds)
    for main, branch in echo.seen:
        torch.testing.assert_close(branch, main, atol=1e-4, rtol=1e-4)
    assert counting.calls == steps  # once per step: never in the branch pass


def test_noise_is_per_sample_not_per_batch():
    model, processor = tiny_qwen2_vl()
    vcd = VCDCombiner()
    decoder = Decoder(model, processor, Parts(logit_combiner=vcd), DecodeConfig(max_new_tokens=1))
    samples = make_samples(3)
    four = vcd.noisy_inputs(decoder.adapter.prepare(samples), samples, decoder.adapter)
    one = vcd.noisy_inputs(decoder.adapter.prepare(samples[2:]), samples[2:], decoder.adapter)
    rows = int(decoder.adapter.prepare(samples[2:])["image_grid_thw"].prod())
    torch.testing.assert_close(four["pixel_values"][-rows:], one["pixel_values"])
    assert not torch.equal(four["pixel_values"], decoder.adapter.prepare(samples)["pixel_values"])


def test_vcd_sampling_repeats_with_its_seed():
    model, processor = tiny_llava()
    config = DecodeConfig(max_new_tokens=3, do_sample=True, top_k=5, seed=3)
    decoder = Decoder(model, processor, Parts(logit_combiner=VCDCombiner()), config)
    a = [p.tokens for p in decoder.generate(make_samples(2))]
    b = [p.tokens for p in decoder.generate(make_samples(2))]
    assert a == b and all(len(t) >= 1 for t in a)  # seeded sampling repeats
