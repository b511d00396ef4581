"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one grid of image tokens per image."""

from __future__ import annotations

from mllm_refine.adapters.base import ModelAdapter


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 and other single-grid LLaVA checkpoints."""

    name = "llava"
    model_types = ("llava",)
    model_classes = ("LlavaForConditionalGeneration",)
