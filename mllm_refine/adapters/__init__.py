"""Built-in model adapters, registered through the plugin hooks like any third-party adapter."""

from __future__ import annotations

from typing import Any, Callable

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.adapters.llava import LlavaAdapter
from mllm_refine.adapters.llava_next import LlavaNextAdapter
from mllm_refine.adapters.qwen_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import nn

BUILTIN_ADAPTERS: list[type[ModelAdapter]] = [
    LlavaAdapter,
    LlavaNextAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    Qwen3VLAdapter,
]


@hookimpl
def register_adapters(register: Callable[[type], None]) -> None:
    for cls in BUILTIN_ADAPTERS:
        register(cls)


class UnsupportedModelError(ValueError):
    pass


def adapter_for(model: nn.Module, processor: Any) -> ModelAdapter:
    """The registered adapter whose family matches ``model``."""
    from mllm_refine.plugin_manager import get_registry

    entries = get_registry().entries.get("adapter", {})
    for entry in entries.values():
        if entry.obj.matches(model):
            return entry.obj(model, processor)
    supported = "; ".join(
        f"{e.name} ({', '.join(e.obj.model_classes) or ', '.join(e.obj.model_types)})" for e in entries.values()
    )
    model_type = getattr(model.config, "model_type", type(model).__name__)
    raise UnsupportedModelError(
        f"model type {model_type!r} ({type(model).__name__}) is not supported; supported families: {supported}"
    )


__all__ = [
    "ModelAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "UnsupportedModelError",
    "adapter_for",
    "BUILTIN_ADAPTERS",
]
