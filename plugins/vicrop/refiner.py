"""The ViCrop refiners: importance map -> box -> answer with ``[image, crop]``.

``vicrop`` computes one of ViCrop's maps (``maps.py``); ``contrastive_crop`` uses the contrastive
attention map ``I_A = Abar_final - Abar_{i*}`` (arXiv 2601.08151, its crop reading). Both run their
extra passes once over the whole batch, may split images into blocks (``split``: one map per
block, stitched), search the box (``box.py``) and append the crop of each
sample's first image to its images. Per sample ``meta["<name>"]`` holds the map (average-pooled
to at most ``report_cells`` per side, as lists), the box in original image pixels and its ratio.

Defaults follow the authors' code (saccharomycetes/mllms_know: ``run.py``, ``llava_methods.py``,
``qwen2_5_methods.py``, ``utils.py``): the block the family reads (``PAPER_LAYER``, decided by the
adapter's ``info.family``), the crop base (``bbox_size``: the encoder's input size, 224 where it
has none), no split unless asked (``split="high"`` is their ``*_high`` methods), and ``[image,
crop]`` given to the model in that order, both before the question. Their prompts end every
question, ``q'`` included, with " Answer the question using a single word or phrase."; here the
question is the sample's own, so a dataset whose questions carry such an instruction should put it
after ``generic`` too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mllm_refine.components import InputRefiner, ModelInfo, RefineContext, Sample, resolve_layers
from mllm_refine.functional import (
    CONTRASTIVE_DEPTH,
    CONTRASTIVE_FUSION,
    CONTRASTIVE_REVIEW,
    CONTRASTIVE_REVIEW_FAMILIES,
    contrastive_map,
    head_mean_map,
    scale_blocks,
)
from mllm_refine.lazy import F, torch
from mllm_refine_plugins.vicrop import maps
from mllm_refine_plugins.vicrop.box import best_box, split_grid, split_image, stitch

GENERIC = "Write a general description of the image."
RATIOS = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
# The authors' blocks (1-based): LLaVA-1.5-7B reads attentions[14], block 15 of 32;
# Qwen2.5-VL-3B reads attentions[22], block 23 of 36. Keyed by the adapter's family.
PAPER_LAYER = {
    "llava": (15, 32),
    "llava_next": (15, 32),
    "qwen2_vl": (23, 36),
    "qwen2_5_vl": (23, 36),
    "qwen3_vl": (23, 36),
}
# The authors' crop base for an encoder without a fixed input size (Qwen2.5-VL: 224 px); an
# encoder with one (LLaVA's CLIP: 336 px, InstructBLIP's: 224 px) uses that size.
DYNAMIC_CROP = 224
SPLITS = ("never", "high", "above")


def default_layer(info: ModelInfo) -> int:
    """The authors' block for the family, scaled to this model's depth (LLaVA's otherwise)."""
    block, depth = PAPER_LAYER.get(info.family, PAPER_LAYER["llava"])
    return min(info.num_layers, max(1, round(block * info.num_layers / depth)))


def default_crop_size(vision_config: Any) -> int:
    """The encoder's input size in pixels where it has one, else the authors' 224."""
    return getattr(vision_config, "image_size", None) or DYNAMIC_CROP


@dataclass
class CropRefiner(InputRefiner):
    """Shared steps of the crop refiners; subclasses compute ``maps_of(samples, context)``."""

    ratios: list[float] = field(default_factory=lambda: list(RATIOS))  # window sizes, times crop_size
    crop_size: int | None = None  # crop base in px; None: vision_config.image_size, else 224
    # never: one map per image (the authors' rel_att, grad_att, pure_grad); high: every image is
    # mapped block by block on split_grid (their *_high methods); above: only images with a side
    # above split_size are.
    split: Literal["never", "high", "above"] = "never"
    split_size: int = 1024  # block size limit of the split (the authors' res_threshold), px
    report_cells: int = 24  # reported maps are average-pooled to at most this many cells per side

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if not self.ratios or min(self.ratios) <= 0:
            raise ValueError(f"ratios: {self.ratios} must be positive")
        if self.split not in SPLITS:
            raise ValueError(f"split: {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.split != "never" and self.split_size < 1:
            raise ValueError(f"split_size: {self.split_size} must be at least 1 px")

    def maps_of(self, samples: list[Sample], context: RefineContext) -> list[torch.Tensor]:
        raise NotImplementedError

    def refine(self, samples: list[Sample], context: RefineContext) -> list[Sample]:
        size = self.crop_size or default_crop_size(context.vision_config)
        # Each sample's first image, split into blocks if asked; all blocks mapped in one batch.
        jobs: list[Sample] = []
        layout: list[tuple[int, int, int] | None] = []  # per sample: first job, cols, rows
        for s in samples:
            if not s.images:
                layout.append(None)
                continue
            W, H = s.images[0].size
            if self.split == "high" or (self.split == "above" and max(W, H) > self.split_size):
                cols, rows = split_grid(s.images[0].size, self.split_size)
            else:
                cols, rows = 1, 1
            blocks = split_image(s.images[0], cols, rows) if cols * rows > 1 else [s.images[0]]
            layout.append((len(jobs), cols, rows))
            jobs += [dataclasses.replace(s, images=[block]) for block in blocks]
        found = self.maps_of(jobs, context) if jobs else []
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
    layer: int | None = None  # block of the attention maps; None: the authors', scaled by depth
    generic: str = GENERIC  # q' of rel_att and pure_grad; it replaces the question
    high_pass: bool = True  # pure_grad: keep pixels whose high frequencies are above the median
    blur: int = 3  # pure_grad: Gaussian kernel of the high-pass filter
    median: int = 7  # pure_grad: median filter of the high-pass magnitude

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        layer = default_layer(info) if self.layer is None else self.layer
        (self._layer,) = resolve_layers([layer], info.num_layers, "layer")

    def maps_of(self, samples: list[Sample], context: RefineContext) -> list[torch.Tensor]:
        if self.method == "rel_att":
            return maps.rel_att(context, samples, self._layer, self.generic)
        if self.method == "grad_att":
            return maps.grad_att(context, samples, self._layer)
        return maps.pure_grad(context, samples, self.generic, self.high_pass, self.blur, self.median)


@dataclass
class ContrastiveCrop(CropRefiner):
    """Contrastive attention, crop reading: crop where ``I_A = Abar_k - Abar_{i*}`` is high."""

    name = "contrastive_crop"
    fusion: list[int] | None = None  # fusion blocks S; None: LLaVA-1.5's 2, 4, 8, 11, 12, 13 of 32, scaled
    final: int | None = None  # block k; None: LLaVA's review block 29 of 32 scaled, else the last

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        fusion = self.fusion or scale_blocks(CONTRASTIVE_FUSION, L, CONTRASTIVE_DEPTH)
        self._fusion = resolve_layers(fusion, L, "fusion")
        review = scale_blocks((CONTRASTIVE_REVIEW,), L, CONTRASTIVE_DEPTH)[0] if info.family in CONTRASTIVE_REVIEW_FAMILIES else L
        (self._final,) = resolve_layers([review if self.final is None else self.final], L, "final")

    def maps_of(self, samples: list[Sample], context: RefineContext) -> list[torch.Tensor]:
        layers = sorted({*self._fusion, self._final})
        with torch.no_grad():
            p = context.prefill(samples, layers, logits=False)
        abar = {layer: head_mean_map(p.image_rows(layer), p.image_slots) for layer in layers}  # l -> (B, I)
        contrast, _ = contrastive_map(abar, self._fusion, self._final)  # (B, I) I_A
        return maps.token_maps(p, contrast)
