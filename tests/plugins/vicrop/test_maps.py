"""ViCrop's maps: the high-pass mask on a known image, grad-att and pure-grad gradients against
finite differences on a tiny float64 model, and one batched forward per refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_refine.adapters import adapter_for
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.prefill import RowProbe, forward_kwargs, prefill
from mllm_refine.testing.tiny_models import tiny_llava, tiny_qwen2_vl
from mllm_refine_plugins.vicrop import ContrastiveCrop, ViCrop
from mllm_refine_plugins.vicrop.maps import high_pass_mask, input_gradients
from tests.conftest import make_samples


def test_high_pass_mask_marks_texture_not_flat_areas():
    pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    checker = (np.indices((64, 32)).sum(0) % 2 * 255).astype(np.uint8)  # 1-px checkerboard
    pixels[:, 32:] = checker[..., None]
    mask = high_pass_mask(Image.fromarray(pixels), (64, 64))
    assert mask.shape == (64, 64)
    assert mask[:, 40:].all() and not mask[:, :24].any()
    assert not high_pass_mask(Image.new("RGB", (20, 20), (90, 90, 90)), (20, 20)).any()  # flat: nothing above median


@pytest.fixture(scope="module")
def llava64():
    model, processor = tiny_llava(dtype=torch.float64)
    return model, adapter_for(model, processor)


def _v(logits: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).max(-1).values


class Nudge(RowProbe):
    """Adds ``eps`` to one entry of the last row's attention of one block."""

    def __init__(self, adapter, layer, index, eps):
        super().__init__(adapter, [layer])
        self.index, self.eps = index, eps

    def use(self, layer, probs):
        delta = torch.zeros_like(probs)
        delta[self.index] = self.eps
        return probs + delta


def test_grad_att_gradient_matches_finite_differences(llava64):
    model, adapter = llava64
    samples, layer = make_samples(2), 3
    p = prefill(model, adapter, samples, [layer], grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_v(p.logits).sum(), [p.rows[layer]])  # (B, H, K)
    eps = 1e-2  # central differences; the tiny model's logits carry ~1e-6 of rounding noise
    for b, h, i in [(0, 1, 0), (1, 3, 5), (1, 0, 11)]:
        k = int(p.image_index[b, i])
        v = [_v(prefill(model, adapter, samples, [layer], probe=Nudge(adapter, layer, (b, h, k), s * eps)).logits)[b]
             for s in (1, -1)]
        fd = (v[0] - v[1]).item() / (2 * eps)
        assert grad[b, h, k].item() == pytest.approx(fd, rel=1e-2, abs=1e-5)
    assert grad[0].abs().sum() > 0


def test_pure_grad_gradient_matches_finite_differences(llava64):
    model, adapter = llava64
    samples = make_samples(2)
    _, grad = input_gradients(model, adapter, samples)  # (N, 3, 32, 32)
    inputs = adapter.prepare(samples)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    eps = 1e-2  # central differences; the tiny model's logits carry ~1e-6 of rounding noise
    for idx in [(0, 0, 3, 4), (1, 2, 20, 9), (1, 1, 31, 31)]:
        v = []
        for s in (1, -1):
            x = dict(inputs)
            x["pixel_values"] = inputs["pixel_values"].clone()
            x["pixel_values"][idx] += s * eps
            with torch.no_grad():
                v.append(_v(model(**forward_kwargs(model, x)).logits[:, -1])[idx[0]].item())
        assert grad[idx].item() == pytest.approx((v[0] - v[1]) / (2 * eps), rel=1e-2, abs=1e-5)


class Counter:
    def __init__(self, model):
        self.calls, self.batches = 0, []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls += 1
        self.batches.append(kwargs["input_ids"].shape[0])


@pytest.mark.parametrize("factory", [tiny_llava, tiny_qwen2_vl])
def test_extra_passes_are_batched(factory):
    model, processor = factory()
    counter = Counter(model)
    samples = make_samples(4)
    for refiner, batch in [
        (ViCrop(method="rel_att"), 8),  # specific and generic questions in one batch
        (ViCrop(method="grad_att"), 4),
        (ViCrop(method="pure_grad"), 8),
        (ContrastiveCrop(), 4),
    ]:
        decoder = Decoder(model, processor, Parts(input_refiners=[refiner]), DecodeConfig(max_new_tokens=1))
        counter.calls, counter.batches = 0, []
        out = refiner.refine(samples, decoder)
        assert (counter.calls, counter.batches) == (1, [batch])
        assert all(len(s.images) == 2 for s in out)
        boxes = [s.meta[refiner.name]["box"] for s in out]
        assert all(0 <= x0 < x1 <= s.images[0].width and 0 <= y0 < y1 <= s.images[0].height
                   for (x0, y0, x1, y1), s in zip(boxes, samples))


def test_large_images_are_mapped_block_by_block():
    model, processor = tiny_llava()
    refiner = ViCrop(method="rel_att", split_above=40)  # 64 x 48: rows ceil(48 / 40) = 2, cols int(2 * 64 / 48) = 2
    decoder = Decoder(model, processor, Parts(input_refiners=[refiner]), DecodeConfig(max_new_tokens=1))
    counter = Counter(model)
    (out,) = refiner.refine(make_samples(1, sizes=[(48, 64)]), decoder)
    assert counter.batches == [8]  # 4 blocks x (specific, generic), one forward
    assert np.array(out.meta["vicrop"]["map"]).shape == (8, 8)  # 2 x 2 block maps of 4 x 4 cells
