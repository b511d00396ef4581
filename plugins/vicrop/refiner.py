"""The ViCrop refiners: importance map -> box -> answer with ``[image, crop]``.

``vicrop`` computes one of ViCrop's maps (``maps.py``); ``contrastive_crop`` uses the contrastive
attention map ``I_A = Abar_final - Abar_{i*}`` (arXiv 2601.08151, its crop reading). Both run their
extra passes once over the whole batch, split images larger than ``split_above`` pixels into
blocks (one map per block, stitched), search the box (``box.py``) and append the crop of each
sample's first image to its images. Per sample ``meta["<name>"]`` holds the map (average-pooled
to at most ``report_cells`` per side, as lists), the box in original image pixels and its ratio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from mllm_refine.components import InputRefiner, ModelInfo, resolve_layers
from mllm_refine.data.sample import Sample
from mllm_refine.engine.prefill import prefill
from mllm_refine_plugins.contrastive_attention import (
    LLAVA_FUSION,
    LLAVA_REVIEW,
    REVIEW_FAMILIES,
    contrastive_map,
    head_mean_map,
    scaled,
)
from mllm_refine_plugins.vicrop import maps
from mllm_refine_plugins.vicrop.box import best_box, split_grid, split_image, stitch

GENERIC = "Write a general description of the image."
RATIOS = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
# The paper's blocks: LLaVA-1.5-7B block 15 of 32, Qwen2.5-VL-3B block 22 of 36.
PAPER_LAYER = {"llava": (15, 32), "llava_next": (15, 32), "qwen2_vl": (22, 36), "qwen2_5_vl": (22, 36), "qwen3_vl": (22, 36)}


def default_layer(info: ModelInfo) -> int:
    """The paper's block for the family, scaled to this model's depth (LLaVA's otherwise)."""
    block, depth = PAPER_LAYER.get(info.family, PAPER_LAYER["llava"])
    return min(info.num_layers, max(1, round(block * info.num_layers / depth)))


@dataclass
class CropRefiner(InputRefiner):
    """Shared steps of the crop refiners; subclasses compute ``maps_of(samples, decoder)``."""

    ratios: list[float] = field(default_factory=lambda: list(RATIOS))  # window sizes, times crop_size
    crop_size: int | None = None  # encoder input size in px; None: vision_config.image_size, else 336
    split_above: int = 1024  # images with a side above this (px) are mapped block by block; 0 never
    report_cells: int = 24  # reported maps are average-pooled to at most this many cells per side

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if not self.ratios or min(self.ratios) <= 0:
            raise ValueError(f"ratios: {self.ratios} must be positive")

    def maps_of(self, samples: list[Sample], decoder: Any) -> list[torch.Tensor]:
        raise NotImplementedError

    def refine(self, samples: list[Sample], decoder: Any) -> list[Sample]:
        size = self.crop_size or getattr(decoder.model.config.vision_config, "image_size", None) or 336
        # Each sample's first image, split into blocks when large; all blocks mapped in one batch.
        jobs, layout = [], []
        for s in samples:
            if not s.images:
                layout.append(None)
                continue
            cols, rows = split_grid(s.images[0].size, self.split_above)
            blocks = split_image(s.images[0], cols, rows) if cols * rows > 1 else [s.images[0]]
            layout.append((len(jobs), cols, rows))
            jobs += [dataclasses.replace(s, images=[block]) for block in blocks]
        found = self.maps_of(jobs, decoder) if jobs else []
        out = []
        for s, where in zip(samples, layout):
            if where is None:
                out.append(s)
                continue
            start, cols, rows = where
            m = stitch(found[start : start + cols * rows], cols, rows)  # (R, C)
            box = best_box(m, s.images[0].size, size, self.ratios)
            crop = s.images[0].crop((box.x0, box.y0, box.x1, box.y1))
            cells = (min(m.shape[0], self.report_cells), min(m.shape[1], self.report_cells))
            report = {
                "box": box.as_list(),
                "ratio": box.ratio,
                "map": F.adaptive_avg_pool2d(m[None], cells)[0].tolist(),
            }
            out.append(dataclasses.replace(s, images=[*s.images, crop], meta={**s.meta, self.name: report}))
        return out


@dataclass
class ViCrop(CropRefiner):
    """ViCrop: crop where the model looks (rel-att, grad-att or pure-grad) and answer with both."""

    name = "vicrop"
    method: Literal["rel_att", "grad_att", "pure_grad"] = "rel_att"
    layer: int | None = None  # block of the attention maps; None: the paper's, scaled by depth
    generic: str = GENERIC  # q' of rel_att and pure_grad
    high_pass: bool = True  # pure_grad: keep pixels whose high frequencies are above the median
    blur: int = 3  # pure_grad: Gaussian kernel of the high-pass filter
    median: int = 7  # pure_grad: median filter of the high-pass magnitude

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        layer = default_layer(info) if self.layer is None else self.layer
        (self._layer,) = resolve_layers([layer], info.num_layers, "layer")

    def maps_of(self, samples: list[Sample], decoder: Any) -> list[torch.Tensor]:
        model, adapter = decoder.model, decoder.adapter
        if self.method == "rel_att":
            return maps.rel_att(model, adapter, samples, self._layer, self.generic)
        if self.method == "grad_att":
            return maps.grad_att(model, adapter, samples, self._layer)
        return maps.pure_grad(model, adapter, samples, self.generic, self.high_pass, self.blur, self.median)


@dataclass
class ContrastiveCrop(CropRefiner):
    """Contrastive attention, crop reading: crop where ``I_A = Abar_k - Abar_{i*}`` is high."""

    name = "contrastive_crop"
    fusion: list[int] | None = None  # fusion blocks S; None: LLaVA-1.5's 2, 4, 8, 11, 12, 13 of 32, scaled
    final: int | None = None  # block k; None: LLaVA's review block 29 of 32 scaled, else the last

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        self._fusion = resolve_layers(self.fusion or scaled(LLAVA_FUSION, L), L, "fusion")
        review = scaled((LLAVA_REVIEW,), L)[0] if info.family in REVIEW_FAMILIES else L
        (self._final,) = resolve_layers([review if self.final is None else self.final], L, "final")

    def maps_of(self, samples: list[Sample], decoder: Any) -> list[torch.Tensor]:
        layers = sorted({*self._fusion, self._final})
        with torch.no_grad():
            p = prefill(decoder.model, decoder.adapter, samples, layers, logits=False)
        abar = {layer: head_mean_map(p.image_rows(layer), p.image_slots) for layer in layers}  # l -> (B, I)
        contrast, _ = contrastive_map(abar, self._fusion, self._final)  # (B, I) I_A
        return maps.token_maps(p, contrast, decoder.adapter)
