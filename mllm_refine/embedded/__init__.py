"""The embedded default model: a LLaVA whose language model is SmolLM2-135M-Instruct and whose
vision tower, projector and LoRA factors were trained on easy-VQA (see docs/embedded.md).

It is registered as the model ``smollm2-135m-easyvqa``, the default of the shipped recipes.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from mllm_refine.embedded.assembly import NAME, assemble, assets_hash, default_model_path, load_default
from mllm_refine.hookspecs import hookimpl


def embedded_model(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct + a ViT trained on easy-VQA (LLaVA layout), assembled on first use."""
    return load_default(dtype)


@hookimpl
def register_models(register: Callable[[str, Callable], None]) -> None:
    register(NAME, embedded_model)


__all__ = ["NAME", "assemble", "assets_hash", "default_model_path", "embedded_model", "load_default"]
