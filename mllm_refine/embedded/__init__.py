"""The embedded models (see docs/embedded.md), both with SmolLM2-135M-Instruct as their language
model and a vision side trained by this project:

- ``smollm2-135m-easyvqa``, the default of the shipped recipes: a LLaVA trained on easy-VQA;
- ``smollm2-135m-scenes-qwen``: a Qwen2.5-VL trained on the easy-VQA scenes, whose attention
  looks at the object it answers about.
"""

from __future__ import annotations

from typing import Any, Callable

from mllm_refine.embedded.assembly import NAME, assemble, assets_hash, default_model_path, load_default
from mllm_refine.embedded.qwen_spec import NAME as QWEN_NAME
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch


def embedded_model(dtype: torch.dtype | str = "float32") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct + a ViT trained on easy-VQA (LLaVA layout), assembled on first use."""
    return load_default(dtype)


def embedded_qwen_model(dtype: torch.dtype | str = "float32") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a Qwen2.5-VL with a vision tower trained on the easy-VQA scenes."""
    from mllm_refine.embedded import qwen_assembly

    return qwen_assembly.load(dtype)


@hookimpl
def register_models(register: Callable[[str, Callable], None]) -> None:
    register(NAME, embedded_model)
    register(QWEN_NAME, embedded_qwen_model)


__all__ = ["NAME", "QWEN_NAME", "embedded_qwen_model", "assemble", "assets_hash", "default_model_path", "embedded_model", "load_default"]
