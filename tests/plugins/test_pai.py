"""PAI: the amplified scores and the guidance by hand and against a transcription of the authors'
code, their settings, the image-free branch without amplification, then the recipes end to end."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mllm_refine.components import AttentionRow, ModelInfo
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.parts import ConflictError
from mllm_refine.engine.processor import post_processors
from mllm_refine.recipes import load_recipe
from mllm_refine.testing.tiny_models import tiny_llava, tiny_qwen2_vl
from mllm_refine_plugins.pai import BRANCH, PAIFilter, PAIGuidance, amplify, guide
from tests.conftest import make_samples

ROOT = Path(__file__).resolve().parents[2]
INFO = ModelInfo(num_layers=8, num_heads=2, num_kv_heads=2, hidden_size=8, vocab_size=5, family="test")


def test_amplify_by_hand():
    scores = torch.tensor([[[2.0, -1.0, 3.0, -4.0], [0.5, 0.0, -2.5, 1.0]]])  # (B=1, H=2, K=4)
    image = torch.tensor([[False, True, True, False]])
    out = amplify(scores, image, 0.2)
    # Image keys 1, 2: s + 0.2 |s| -> -1 + 0.2 = -0.8, 3 + 0.6 = 3.6, 0 -> 0, -2.5 + 0.5 = -2.0.
    expected = torch.tensor([[[2.0, -0.8, 3.6, -4.0], [0.5, 0.0, -2.0, 1.0]]])
    torch.testing.assert_close(out, expected)


def authors_amplified_rows(weights: torch.Tensor, start: int, end: int, alpha: float) -> torch.Tensor:
    """PAI's attention.py: on (B, H, Q, K) weights (scores + mask), the last query row's image
    span [start, end) becomes |w| * alpha + w; everything else is untouched."""
    w = weights.clone()
    w[:, :, -1, start:end] = w[:, :, -1, start:end].abs() * alpha + w[:, :, -1, start:end]
    return w


def test_amplify_matches_the_authors_code():
    torch.manual_seed(0)
    weights = torch.randn(2, 3, 5, 11)  # (B, H, Q, K)
    start, end = 3, 8
    image = torch.zeros(2, 11, dtype=torch.bool)
    image[:, start:end] = True
    theirs = authors_amplified_rows(weights, start, end, 0.2)[:, :, -1]  # (B, H, K)
    torch.testing.assert_close(amplify(weights[:, :, -1], image, 0.2), theirs)


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


def authors_cfg(scores: torch.Tensor, uncond_logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """PAI's CFG.py ``CFGLogits.__call__`` on one step: log-softmax both, ``gamma * (s - u) + u``,
    tokens below log(0.1) + max s set to -inf; at gamma 1 the log-softmax alone."""
    s = F.log_softmax(scores, dim=-1)
    if gamma == 1:
        return s
    u = F.log_softmax(uncond_logits, dim=-1)
    cutoff = torch.log(torch.tensor(0.1)) + s.max(dim=-1, keepdim=True).values
    out = gamma * (s - u) + u
    return out.masked_fill(s < cutoff, -float("inf"))


class FakeView:
    def __init__(self, logits, free):
        self.logits, self._free = logits, free

    def branch_logits(self, name):
        assert name == BRANCH
        return self._free


@pytest.mark.parametrize("gamma", [1.1, 2.0, 1.0])
def test_guidance_matches_the_authors_code(gamma):
    torch.manual_seed(1)
    z, z_free = 3 * torch.randn(4, 50), 3 * torch.randn(4, 50)  # (B, V)
    g = PAIGuidance(gamma=gamma)
    g.setup(INFO)
    ours = g.combine(FakeView(z, z_free), None)
    theirs = authors_cfg(z, z_free, gamma)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours, theirs)
    if gamma > 1:
        assert torch.isinf(ours).any()  # the 0.1 plausibility cut acts on these rows


def test_guidance_by_hand():
    # p and q both sum to 8.1, so s = ln(p / 8.1) and u = ln(q / 8.1).
    p = torch.tensor([[4.0, 2.0, 1.0, 1.0, 0.1]])
    q = torch.tensor([[2.0, 4.0, 1.0, 0.1, 1.0]])
    out = guide(p.log(), q.log(), gamma=2.0, beta=0.1)
    # u + 2 (s - u) = 2 s - u = ln(p^2 / q / 8.1): [ln(8/8.1), ln(1/8.1), ln(1/8.1), ln(10/8.1), .]
    # Cut: max s + ln 0.1 = ln(0.4 / 8.1); token 4 has s = ln(0.1 / 8.1) below it.
    expected = torch.tensor([[8.0, 1.0, 1.0, 10.0, 0.0]]).div(8.1).log()
    expected[0, 4] = float("-inf")
    torch.testing.assert_close(out, expected)
    keep_all = guide(p.log(), q.log(), gamma=2.0, beta=0.0)
    assert torch.isfinite(keep_all).all()
    torch.testing.assert_close(keep_all[0, 4], torch.tensor(0.01 / 8.1).log())  # 2 ln 0.1 - ln 1


def test_guidance_settings():
    g = PAIGuidance()
    g.setup(INFO)
    assert (g.gamma, g.beta, g.prompt) == (1.1, 0.1, "strip")  # the authors' run commands and CFG.py
    assert {b.name for b in g.needs().branches} == {BRANCH}
    off = PAIGuidance(gamma=1.0)
    off.setup(INFO)
    assert off.needs().branches == frozenset()  # gamma 1: no image-free pass at all
    with pytest.raises(ValueError, match="gamma: 0.5 must be >= 1"):
        PAIGuidance(gamma=0.5).setup(INFO)
    with pytest.raises(ValueError, match="beta"):
        PAIGuidance(beta=1.5).setup(INFO)


def test_shipped_recipe_runs_guidance_as_the_authors():
    recipe = load_recipe(ROOT / "recipes" / "pai.yaml")
    combiner, (amp,) = recipe.parts.logit_combiner, recipe.parts.head_filters
    assert isinstance(combiner, PAIGuidance) and (combiner.gamma, combiner.beta, combiner.prompt) == (1.1, 0.1, "strip")
    assert isinstance(amp, PAIFilter) and amp.alpha == 0.2 and amp.layers is None
    assert not recipe.decode.do_sample and len(post_processors(recipe.decode)) == 0  # greedy, no penalty


@dataclass
class RecordingGuidance(PAIGuidance):
    name = "recording_guidance"

    def combine(self, view, layer):
        self.seen = getattr(self, "seen", []) + [(view.logits.clone(), view.branch_logits(BRANCH).clone())]
        return super().combine(view, layer)


@pytest.mark.parametrize("factory", [tiny_llava, tiny_qwen2_vl])
def test_image_free_branch_is_not_amplified(factory):
    """The branch is the model's own text-only answer (PAI's code switches the amplification off
    there), while the main pass is amplified."""
    model, processor = factory()
    samples = make_samples(2)
    amplified = RecordingGuidance()
    Decoder(model, processor, Parts(logit_combiner=amplified, head_filters=[PAIFilter(alpha=0.5)]),
            DecodeConfig(max_new_tokens=1)).generate(samples)  # fmt: skip
    plain = RecordingGuidance()
    Decoder(model, processor, Parts(logit_combiner=plain), DecodeConfig(max_new_tokens=1)).generate(samples)
    (main_amp, free_amp), (main_plain, free_plain) = amplified.seen[0], plain.seen[0]
    torch.testing.assert_close(free_amp, free_plain)
    assert not torch.allclose(main_amp, main_plain)
    adapter = Decoder(model, processor).adapter
    text = adapter.prepare([dataclasses.replace(s, images=[]) for s in samples])
    with torch.no_grad():
        own = model(**text).logits[:, -1]  # (B, V) text-only prompts, no image, no filter
    torch.testing.assert_close(free_plain, own, atol=1e-4, rtol=1e-4)


def test_guidance_changes_answers_over_amplification_alone(tiny, samples):
    _, model, processor = tiny
    amp = Decoder(model, processor, Parts(head_filters=[PAIFilter()]), DecodeConfig(max_new_tokens=6))
    both = Decoder(model, processor, Parts(head_filters=[PAIFilter()], logit_combiner=PAIGuidance(gamma=3.0)),
                   DecodeConfig(max_new_tokens=6))  # fmt: skip
    assert [p.tokens for p in amp.generate(samples)] != [p.tokens for p in both.generate(samples)]
