"""ViCrop's importance maps, one per sample, on the grid of its first image's tokens.

All passes run once over the whole batch (specific and generic questions stacked into one batch).

- ``rel_att``: ``A(q) / A(q')``, head-mean post-softmax attention of the last prompt token over
  the image tokens at one block, for the question ``q`` and the generic ``q'``.
- ``grad_att``: ``mean_h A * relu(dv/dA)`` at that block, ``v = log max softmax(z_N)``; ``A`` is
  the last prompt row, a leaf of the graph (``RowProbe(grad=True)``).
- ``pure_grad``: ``||dv/dx||_2`` over the channels of the pixels the encoder sees, specific over
  generic, kept where a high-pass filter of the image is above its median, averaged over the
  pixels of each image token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from mllm_refine.components import PrefillView, RefineContext, Sample
from mllm_refine.lazy import F, torch


def token_maps(p: PrefillView, values: torch.Tensor, finest: bool = True) -> list[torch.Tensor]:
    """Per row ``b`` of ``values`` (n, I), sample ``b`` of the pass: ``(R, C)``, its values placed on a grid of its
    first image (the finest of that image's grids, e.g. LLaVA-NeXT's stitched tiles; or the
    first, e.g. its base view); row-end tokens (newlines) are dropped."""
    grids = p.image_grids()  # per sample of the pass: [(rows, cols), ...]
    ends = p.row_end_tokens
    out = []
    for b in range(values.shape[0]):  # the first rows of the pass
        sample_grids = grids[b]
        first = sample_grids[: len(ends)]  # the grids of the sample's first image
        spans, start = [], 0
        for (r, c), n in zip(first, ends):
            spans.append((start, r, c, n))
            start += r * (c + n)
        pick = max(range(len(spans)), key=lambda j: spans[j][1] * spans[j][2]) if finest else 0
        s, r, c, n = spans[pick]
        cells = values[b, s : s + r * (c + n)].reshape(r, c + n)[:, :c]  # (R, C)
        out.append(cells.detach().double().cpu())
    return out


def _with_question(samples: list[Sample], question: str) -> list[Sample]:
    return [dataclasses.replace(s, question=question) for s in samples]


def _v(logits: torch.Tensor) -> torch.Tensor:
    """``(B,)``: ``v = log max softmax(z_N)``, the model's confidence in its top token."""
    return logits.log_softmax(-1).max(-1).values


def rel_att(context: RefineContext, samples: list[Sample], layer: int, generic: str) -> list[torch.Tensor]:
    """``A(q) / A(q')`` per sample; one forward over ``2B`` prompts, up to block ``layer``."""
    B = len(samples)
    p = context.prefill(samples + _with_question(samples, generic), [layer], logits=False)
    a = p.image_rows(layer).mean(1)  # (2B, I) head mean
    ratio = a[:B] / a[B:].clamp_min(torch.finfo(a.dtype).tiny)  # (B, I)
    return token_maps(p, ratio)


def grad_att(context: RefineContext, samples: list[Sample], layer: int) -> list[torch.Tensor]:
    """``mean_h A * relu(dv/dA)`` per sample; one forward and one backward."""
    p = context.prefill(samples, [layer], grad=True)
    with torch.enable_grad():  # samples are independent: one backward of the sum gives each its own
        assert p.logits is not None
        (grad,) = torch.autograd.grad(_v(p.logits).sum(), [p.rows[layer]])  # (B, H, K)
    a = p.image_rows(layer).detach()  # (B, H, I)
    g = p.image_rows(layer, grad)  # (B, H, I)
    return token_maps(p, (a * g.clamp_min(0)).mean(1))


def input_gradients(context: RefineContext, samples: list[Sample]) -> tuple[PrefillView, torch.Tensor]:
    """``dv/dx`` of the batch's ``pixel_values`` (same shape), one forward and one backward."""
    p = context.prefill(samples, [], pixel_grad=True)
    with torch.enable_grad():
        assert p.logits is not None
        (grad,) = torch.autograd.grad(_v(p.logits).sum(), [p.inputs["pixel_values"]])
    return p, grad


def pixel_planes(grad: torch.Tensor, inputs: Any, vision_config: Any) -> list[torch.Tensor]:
    """Per image, ``(C', H', W')``: the gradient laid out as the image the encoder saw.
    Tiled images (``(tiles, C, H, W)``) give their first tile, the whole-image view; patch-rows
    images (``image_grid_thw``) are un-patchified, channels and temporal copies stacked."""
    if "image_grid_thw" in inputs:
        P, m = vision_config.patch_size, vision_config.spatial_merge_size
        T = vision_config.temporal_patch_size
        planes = []
        for rows, (t, gh, gw) in zip(grad.split(inputs["image_grid_thw"].prod(-1).tolist()), inputs["image_grid_thw"].tolist()):
            x = rows.reshape(t, gh // m, gw // m, m, m, -1, T, P, P)  # (t, gh/m, gw/m, m, m, C, T, P, P)
            x = x.permute(0, 5, 6, 1, 3, 7, 2, 4, 8).reshape(-1, gh * P, gw * P)  # (t*C*T, gh*P, gw*P)
            planes.append(x)
        return planes
    return [g[0] if g.dim() == 4 else g for g in grad]


def high_pass_mask(image: Image.Image, size: tuple[int, int], blur: int = 3, median: int = 7) -> torch.Tensor:
    """``(H', W')`` bool: where the image's high frequencies are above their median.

    As the authors' ``high_pass_filter`` (``utils.py``): the image, resized bilinearly to
    ``size = (H', W')`` in [0, 1], minus its Gaussian blur (``blur`` x ``blur``, sigma as
    torchvision's default, borders reflected without repeating the edge), L2 over channels,
    median filtered (``median`` x ``median``, borders reflected repeating the edge, as scipy's
    ``median_filter``), compared with its median.
    """
    x = torch.from_numpy(np.array(image.convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR)))
    x = x.permute(2, 0, 1).double()[None] / 255.0  # (1, 3, H', W')
    sigma = 0.3 * ((blur - 1) * 0.5 - 1) + 0.8
    k = torch.exp(-((torch.arange(blur, dtype=torch.float64) - (blur - 1) / 2) ** 2) / (2 * sigma**2))
    k = (k / k.sum())[:, None] * (k / k.sum())[None, :]  # (blur, blur)
    pad = blur // 2
    low = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), k.expand(3, 1, blur, blur), groups=3)
    h = (x - low)[0].norm(dim=0)  # (H', W')
    r = median // 2
    padded = torch.from_numpy(np.pad(h.numpy(), r, mode="symmetric"))  # (H' + 2r, W' + 2r)
    windows = F.unfold(padded[None, None], median)  # (1, median^2, H'*W')
    h = windows.median(dim=1).values.reshape(h.shape)  # (H', W') an odd count: the exact median
    return h > h.median()  # the lower middle value: the same cut as numpy's mean of the two middles


def pure_grad(
    context: RefineContext, samples: list[Sample], generic: str, high_pass: bool = True, blur: int = 3, median: int = 7
) -> list[torch.Tensor]:
    """``||dv/dx||_2`` specific over generic, high-pass masked, pooled to each token cell."""
    B = len(samples)
    p, grad = input_gradients(context, samples + _with_question(samples, generic))
    planes = pixel_planes(grad, p.inputs, context.vision_config)
    first = [sum(len(s.images) for s in samples[:b]) for b in range(B)]  # batch image of each first image
    shift = sum(len(s.images) for s in samples)  # the generic half's images follow
    grids = p.image_grids()
    out = []
    for b, s in enumerate(samples):
        g = planes[first[b]].norm(dim=0) / planes[first[b] + shift].norm(dim=0).clamp_min(1e-30)  # (H', W')
        if high_pass:
            g = g * high_pass_mask(s.images[0], tuple(g.shape), blur, median)
        out.append(F.adaptive_avg_pool2d(g.double()[None], grids[b][0])[0].cpu())  # (R, C) on the first grid
    return out

