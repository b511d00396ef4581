"""A batch without its images, for a branch that asks what the model says with no image (PAI).

Either each main prompt with its image markup cut out (``strip``), or each sample's prompt rebuilt
by the adapter with no image (``template``). Both keep the batch's order and left padding, so a
branch answer never depends on its batch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from mllm_refine.data.sample import Sample
from mllm_refine.lazy import torch, transformers

if TYPE_CHECKING:
    from mllm_refine.adapters.base import ModelAdapter


def image_markup(adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: image placeholder tokens and the tokens that wrap each image
    (an adapter's ``image_markup_attrs``, e.g. Qwen's vision start and end)."""
    config = adapter.model.config
    wrappers = [getattr(config, a, None) for a in getattr(adapter, "image_markup_attrs", ())]
    wrappers = [w for w in wrappers if w is not None]
    keys = adapter.image_keys(input_ids)
    if wrappers:
        keys = keys | torch.isin(input_ids, torch.tensor(wrappers, device=input_ids.device))
    return keys


def strip_images(inputs: Any, adapter: ModelAdapter) -> transformers.BatchFeature:
    """The batch with every image's markup tokens cut out of its prompts, left padded again.

    Every per-token tensor (``(B, T)`` like ``input_ids``, e.g. Qwen's ``mm_token_type_ids``)
    loses the same positions; image tensors (``pixel_values``, grids, sizes) are dropped.
    """
    ids = inputs["input_ids"]  # (B, T)
    B, T = ids.shape
    valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
    keep = valid & ~image_markup(adapter, ids)  # (B, T)
    lengths = keep.sum(1)  # (B,)
    width = max(int(lengths.max()), 1) if B else 0
    # Dropped positions first, kept ones last, each in prompt order: the last `width` columns
    # hold every kept token right-aligned, i.e. left padded.
    order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, T - width :]  # (B, W)
    slots = torch.arange(width, device=ids.device)[None] >= (width - lengths)[:, None]  # (B, W) real tokens
    pad = adapter.tokenizer.pad_token_id
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.items():
        if torch.is_tensor(value) and not value.is_floating_point() and tuple(value.shape) == (B, T):
            fill = (pad if pad is not None else 0) if key == "input_ids" else 0
            out[key] = torch.where(slots, value.gather(1, order), fill)  # (B, W)
    out["attention_mask"] = slots.to(inputs["attention_mask"].dtype if "attention_mask" in inputs else torch.long)
    return transformers.BatchFeature(out)


def image_free(
    inputs: Any, samples: list[Sample], adapter: ModelAdapter, prompt: Literal["strip", "template"] = "strip"
) -> transformers.BatchFeature:
    """The batch without images: ``strip`` cuts the image markup out of the main prompts;
    ``template`` asks the adapter for each sample's prompt with no image."""
    if prompt == "strip":
        return strip_images(inputs, adapter)
    if prompt == "template":
        device = inputs["input_ids"].device
        return adapter.prepare([dataclasses.replace(s, images=[]) for s in samples]).to(device)
    raise ValueError(f"prompt: {prompt!r} is not 'strip' or 'template'")


__all__ = ["image_free", "image_markup", "strip_images"]
