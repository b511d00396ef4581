"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one grid of image tokens per image."""

from __future__ import annotations

from typing import Mapping

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.lazy import torch


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 and other single-grid LLaVA checkpoints.

    Layers, norm and head: ``model.model.language_model.{layers, norm}``, ``model.lm_head``.
    Image tokens: each ``<image>`` (``config.image_token_id``) expands to the ViT patch grid,
    ``(S / P) x (S / P)`` tokens for image size ``S`` and patch ``P`` (the ``default`` feature
    strategy drops CLS), row-major: token ``k`` of an image is cell ``(k // (S/P), k % (S/P))``.
    """

    name = "llava"
    model_types = ("llava",)
    model_classes = ("LlavaForConditionalGeneration",)

    def grids_of_images(self, inputs: Mapping[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
        config = self.model.config
        if config.vision_feature_select_strategy != "default":
            raise ValueError("image_grid: only the 'default' vision_feature_select_strategy (no CLS) has a pure grid")
        side = config.vision_config.image_size // config.vision_config.patch_size
        images = inputs["pixel_values"].shape[0] if "pixel_values" in inputs else 0
        return [[(side, side)] for _ in range(images)]
