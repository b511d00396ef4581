"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: merged patch grids with multimodal rotary positions."""

from __future__ import annotations

from typing import Mapping

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.lazy import torch


class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL (``Qwen2VLForConditionalGeneration``).

    Layers, norm and head: ``model.model.language_model.{layers, norm}`` (the text model beside
    ``model.model.visual``), ``model.lm_head``.
    Image tokens: ``<|vision_start|><|image_pad|>...<|vision_end|>``; only the ``<|image_pad|>``
    tokens (``config.image_token_id``) carry the image. The vision tower cuts a resized image into
    a ``t x h x w`` patch grid (``image_grid_thw``; ``t = 1`` for images) and merges each
    ``merge x merge`` block into one token, so an image is a ``t x (h/merge) x (w/merge)`` grid
    read row-major (the order of its rotary positions). ``image_grid`` gives
    ``(t * h/merge, w/merge)`` per image: frames stacked as extra rows.
    """

    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_classes = ("Qwen2VLForConditionalGeneration",)
    # Tokens that wrap each image's placeholders: an image-free prompt drops them too.
    image_markup_attrs = ("vision_start_token_id", "vision_end_token_id")

    def grids_of_images(self, inputs: Mapping[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
        merge = self.model.config.vision_config.spatial_merge_size
        thw = inputs["image_grid_thw"].tolist() if "image_grid_thw" in inputs else []  # (N, 3)
        return [[(t * h // merge, w // merge)] for t, h, w in thw]


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): Qwen2-VL's layout and token grid;
    the vision tower's window attention reorders patches internally but restores their order."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_classes = ("Qwen2_5_VLForConditionalGeneration",)


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2-VL's layout and token grid.

    Deepstack adds vision features to the image positions of the first few blocks' outputs, after
    the block's forward hook fires; the current (text) position never changes, so the captured
    residual stream and the logit lens are unaffected.
    """

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_classes = ("Qwen3VLForConditionalGeneration",)
