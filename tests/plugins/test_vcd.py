"""VCD: noise schedule and combination by hand and against a transcription of the authors' code,
the lockstep branch engine, the shipped recipes' decoding, seeded sampling end to end."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mllm_refine.components import HeadFilter, LogitCombiner, Needs
from mllm_refine.components.branch import Branch
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.processor import post_processors
from mllm_refine.functional import sample_seed
from mllm_refine.recipes import load_recipe
from mllm_refine.testing import TINY_RUN
from mllm_refine.testing.tiny_models import tiny_llava, tiny_qwen2_vl
from mllm_refine_plugins.vcd import NOISE_STREAM, VCDCombiner, alpha_bar, diffuse
from tests.conftest import make_samples

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def authors_noise(x: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """VCD's vcd_add_noise.py in float32: sigmoid betas in [1e-5, 5e-3] over 1000 steps,
    sqrt(abar_t) x + sqrt(1 - abar_t) noise, t counted from 0."""
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    abar = torch.cumprod(1 - betas, dim=0)
    return abar.sqrt()[t] * x + (1 - abar).sqrt()[t] * noise


def authors_contrast(z: torch.Tensor, z_noisy: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """VCD's vcd_sample.py (the "version 2" cutoff): log(beta) + max of the clean logits;
    (1 + alpha) z - alpha z_cd, -inf below the cutoff."""
    cutoff = torch.log(torch.tensor(beta)) + z.max(dim=-1, keepdim=True).values
    diffs = (1 + alpha) * z - alpha * z_noisy
    return diffs.masked_fill(z < cutoff, -float("inf"))


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


def test_noise_matches_the_authors_code():
    x = torch.randn(3, 8, 8)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = diffuse(x, 500, alpha_bar(1000, "sigmoid"), torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, authors_noise(x, 500, eps.float()), atol=1e-5, rtol=1e-5)


def test_noisy_branch_is_the_authors_noise_on_the_normalised_pixels():
    model, processor = tiny_llava()
    vcd = VCDCombiner(seed=4)
    decoder = Decoder(model, processor, Parts(logit_combiner=vcd), DecodeConfig(max_new_tokens=1))
    samples = make_samples(2)
    inputs = decoder.adapter.prepare(samples)
    noisy = vcd.noisy_inputs(inputs, samples, decoder.adapter)["pixel_values"]  # (B, C, H, W)
    for b, s in enumerate(samples):
        g = torch.Generator().manual_seed(sample_seed(4, s.id, NOISE_STREAM))
        eps = torch.randn(inputs["pixel_values"][b].shape, generator=g, dtype=torch.float64).float()
        expected = authors_noise(inputs["pixel_values"][b], 500, eps)  # not clamped
        torch.testing.assert_close(noisy[b], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.2), (1.0, 0.1), (0.5, 0.1)])
def test_contrast_matches_the_authors_code(alpha, beta):
    torch.manual_seed(2)
    z, zn = 3 * torch.randn(4, 40), 3 * torch.randn(4, 40)  # (B, V)
    ours = VCDCombiner(alpha=alpha, beta=beta).combine(FakeView(z, zn), None)
    theirs = authors_contrast(z, zn, alpha, beta)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs)) and torch.isinf(ours).any()
    torch.testing.assert_close(ours, theirs)


def test_shipped_recipe_samples_as_the_authors():
    recipe = load_recipe(RECIPES / "vcd.yaml")
    d, vcd = recipe.decode, recipe.parts.logit_combiner
    assert d.do_sample and (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (1.0, 1.0, 0, 1.0)
    # No warper or penalty: tokens are drawn from softmax of the contrasted logits, as their sampler.
    assert len(post_processors(d)) == 0
    assert (vcd.alpha, vcd.beta, vcd.noise_step, vcd.steps, vcd.schedule) == (1.0, 0.2, 500, 1000, "sigmoid")
    greedy = load_recipe(RECIPES / "vcd_greedy.yaml")
    assert not greedy.decode.do_sample and greedy.parts.logit_combiner == vcd


def test_shipped_recipe_repeats_with_its_seed():
    model, processor = tiny_llava()
    samples = make_samples(4)

    def run(*overrides: str) -> list[list[int]]:
        recipe = load_recipe(RECIPES / "vcd.yaml", [*TINY_RUN, "decode.max_new_tokens=4", *overrides])
        return [p.tokens for p in Decoder(model, processor, recipe.parts, recipe.decode).generate(samples)]

    first = run()
    assert run() == first  # same recipe, same seed: the same sampled answers
    assert run("decode.seed=1") != first  # sampling is on: another seed draws other tokens
    greedy = load_recipe(RECIPES / "vcd_greedy.yaml", [*TINY_RUN, "decode.max_new_tokens=4"])
    assert [p.tokens for p in Decoder(model, processor, greedy.parts, greedy.decode).generate(samples)] != first


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
