"""ViCrop's maps: the high-pass mask on a known image, grad-att and pure-grad gradients against
finite differences on a tiny float64 model, and one batched forward per refinement."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_refine.adapter_lookup import adapter_for
from mllm_refine.components import ModelInfo
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.prefill import RowProbe, forward_kwargs, prefill
from mllm_refine.testing.tiny_models import tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl
from mllm_refine_plugins.vicrop import ContrastiveCrop, ViCrop, maps
from mllm_refine_plugins.vicrop.maps import high_pass_mask, input_gradients
from mllm_refine_plugins.vicrop.refiner import GENERIC, default_crop_size, default_layer
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
    return model, adapter_for(model, processor), Decoder(model, processor)


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
    model, adapter, _ = llava64
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
    model, adapter, _ = llava64
    samples = make_samples(2)
    _, grad = input_gradients(llava64[2], samples)  # (N, 3, 32, 32)
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
    refiner = ViCrop(method="rel_att", split="high", split_size=40)  # 64 x 48: rows ceil(48 / 40) = 2, cols int(2 * 64 / 48) = 2
    decoder = Decoder(model, processor, Parts(input_refiners=[refiner]), DecodeConfig(max_new_tokens=1))
    counter = Counter(model)
    (out,) = refiner.refine(make_samples(1, sizes=[(48, 64)]), decoder)
    assert counter.batches == [8]  # 4 blocks x (specific, generic), one forward
    assert np.array(out.meta["vicrop"]["map"]).shape == (8, 8)  # 2 x 2 block maps of 4 x 4 cells


# --- the authors' maps, written out (saccharomycetes/mllms_know) -----------------------------


def authors_high_pass(image: Image.Image, size: tuple[int, int], km: int = 7, kh: int = 3) -> np.ndarray:
    """``utils.py``, ``high_pass_filter(reduce=False)`` then ``> np.median``: torchvision's
    bilinear resize and reflect-padded Gaussian blur, scipy's ``median_filter`` (mode 'reflect')."""
    from scipy.ndimage import median_filter

    x = np.asarray(image.convert("RGB").resize(size[::-1], Image.BILINEAR), dtype=np.float64) / 255.0
    x = x.transpose(2, 0, 1)  # (3, H, W)
    sigma = 0.3 * ((kh - 1) * 0.5 - 1) + 0.8
    t = np.linspace(-(kh - 1) / 2, (kh - 1) / 2, kh)
    k1 = np.exp(-0.5 * (t / sigma) ** 2)
    kernel = np.outer(k1 / k1.sum(), k1 / k1.sum())
    r = kh // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    low = np.zeros_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            low[:, i, j] = (padded[:, i : i + kh, j : j + kh] * kernel).sum(axis=(1, 2))
    h = np.sqrt(((x - low) ** 2).sum(axis=0))
    h = median_filter(h, size=km)
    return h > np.median(h)


@pytest.mark.parametrize("size", [(24, 24), (30, 20)])
def test_high_pass_mask_matches_the_authors(size):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (37, 45, 3), dtype=np.uint8))
    mask = high_pass_mask(image, size)
    assert mask.numpy().tolist() == authors_high_pass(image, size).tolist()


def _eager(factory):
    model, processor = factory()  # same seed: the same weights as the plugin's copy
    model.set_attn_implementation("eager")
    return model, processor


def _image_span(model, ids: torch.Tensor) -> torch.Tensor:
    """The authors' image positions: LLaVA's image tokens; Qwen's tokens between vision start and end."""
    ids = ids.tolist()
    if getattr(model.config, "vision_start_token_id", None) is not None:
        return torch.arange(ids.index(model.config.vision_start_token_id) + 1, ids.index(model.config.vision_end_token_id))
    return torch.tensor([i for i, t in enumerate(ids) if t == model.config.image_token_id])


def _last_row_map(model, adapter, sample, layer, grad=False):
    """``attentions[layer - 1][0, :, -1, image].mean(0)``, or the authors' grad-att at that index."""
    inputs = adapter.prepare([sample])
    with torch.set_grad_enabled(grad):
        out = model(**forward_kwargs(model, inputs), output_attentions=True)
        att = out.attentions[layer - 1]  # (1, H, T, T): attentions[i] is block i + 1
        if grad:
            logit = out.logits[:, -1, :]
            loss = -torch.nn.functional.cross_entropy(logit, logit.argmax(1))
            (g,) = torch.autograd.grad(loss, att)
            att = att * g.clamp_min(0)
    span = _image_span(model, inputs["input_ids"][0])
    return att[0, :, -1, span].mean(0).detach()  # (I,)


@pytest.mark.parametrize("factory", [tiny_llava, tiny_qwen2_5_vl])
def test_rel_att_and_grad_att_match_the_authors(factory):
    model, processor = factory()
    adapter = adapter_for(model, processor)
    eager, _ = _eager(factory)
    samples, layer = make_samples(3), 4
    context = Decoder(model, processor)
    rel = maps.rel_att(context, samples, layer, GENERIC)
    grad = maps.grad_att(context, samples, layer)
    for b, s in enumerate(samples):
        generic = dataclasses.replace(s, question=GENERIC)
        want = _last_row_map(eager, adapter, s, layer) / _last_row_map(eager, adapter, generic, layer)
        torch.testing.assert_close(rel[b].flatten(), want.double(), rtol=1e-4, atol=1e-7)
        want = _last_row_map(eager, adapter, s, layer, grad=True)
        torch.testing.assert_close(grad[b].flatten(), want.double(), rtol=1e-3, atol=1e-8)


def test_pure_grad_matches_the_authors():
    pytest.importorskip("scipy")
    model, processor = tiny_llava()
    adapter = adapter_for(model, processor)
    samples = make_samples(2)
    got = maps.pure_grad(Decoder(model, processor), samples, GENERIC)
    P = model.config.vision_config.patch_size
    for b, s in enumerate(samples):
        norms = []
        for q in (s, dataclasses.replace(s, question=GENERIC)):
            inputs = adapter.prepare([q])
            inputs["pixel_values"].requires_grad_()
            with torch.enable_grad():
                logit = model(**forward_kwargs(model, inputs)).logits[:, -1, :]
                loss = -torch.nn.functional.cross_entropy(logit, logit.argmax(1))
                (g,) = torch.autograd.grad(loss, inputs["pixel_values"])
            norms.append(g[0].double().norm(dim=0).numpy())  # (H', W') L2 over channels
        grad = norms[0] / norms[1] * authors_high_pass(s.images[0], norms[0].shape)
        H, W = grad.shape
        want = grad.reshape(H // P, P, W // P, P).mean(axis=(1, 3))  # block_reduce(mean) by patch
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-4, atol=1e-9)


def test_default_blocks_are_the_authors_counting_from_one():
    llava = ModelInfo(num_layers=32, num_heads=32, num_kv_heads=32, hidden_size=8, vocab_size=4, family="llava")
    qwen = ModelInfo(num_layers=36, num_heads=16, num_kv_heads=2, hidden_size=8, vocab_size=4, family="qwen2_5_vl")
    assert default_layer(llava) == 15  # attentions[14]
    assert default_layer(qwen) == 23  # attentions[22]
    assert default_layer(dataclasses.replace(qwen, num_layers=28)) == 18  # 23 * 28 / 36 = 17.9
    assert default_layer(dataclasses.replace(qwen, family="qwen2_vl")) == 23
    assert default_layer(dataclasses.replace(llava, family="other", num_layers=6)) == 3  # LLaVA's ratio


def test_default_crop_size_is_the_encoder_size_else_224():
    assert default_crop_size(SimpleNamespace(image_size=336)) == 336
    assert default_crop_size(SimpleNamespace()) == 224  # Qwen2.5-VL: no fixed encoder size
    model, processor = tiny_qwen2_5_vl()
    refiner = ViCrop(method="rel_att", ratios=[1.0])
    decoder = Decoder(model, processor, Parts(input_refiners=[refiner]), DecodeConfig(max_new_tokens=1))
    (out,) = refiner.refine(make_samples(1, sizes=[(300, 400)]), decoder)
    x0, y0, x1, y1 = out.meta["vicrop"]["box"]
    assert (x1 - x0, y1 - y0) == (224, 224)


@pytest.mark.parametrize(
    "split, size, batches",
    [
        ("never", (2100, 1050), [2]),  # one map per image, however large (the authors' plain methods)
        ("high", (2100, 1050), [16]),  # rows ceil(1050 / 1024) = 2, cols int(2 * 2100 / 1050) = 4
        ("above", (2100, 1050), [16]),
        ("high", (1000, 400), [4]),  # fits, but the authors' grid has 2 columns
        ("above", (1000, 400), [2]),  # fits: not split
    ],
)
def test_split_modes(split, size, batches):
    model, processor = tiny_llava()
    refiner = ViCrop(method="rel_att", split=split)
    decoder = Decoder(model, processor, Parts(input_refiners=[refiner]), DecodeConfig(max_new_tokens=1))
    counter = Counter(model)
    refiner.refine(make_samples(1, sizes=[size[::-1]]), decoder)
    assert counter.batches == batches


def test_default_does_not_split():
    refiner = ViCrop()
    assert refiner.split == "never"
    info = ModelInfo(num_layers=6, num_heads=4, num_kv_heads=2, hidden_size=8, vocab_size=4, family="llava")
    with pytest.raises(ValueError, match="split"):
        ViCrop(split="always").setup(info)
