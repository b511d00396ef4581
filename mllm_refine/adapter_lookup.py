"""Which registered adapter serves a model: the lookup that ties a loaded model to its family."""

from __future__ import annotations

from typing import Any

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.lazy import nn
from mllm_refine.plugin_manager import get_registry


class UnsupportedModelError(ValueError):
    """No registered adapter matches the model's type."""


def adapter_for(model: nn.Module, processor: Any) -> ModelAdapter:
    """The registered adapter whose family matches ``model``."""
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


__all__ = ["UnsupportedModelError", "adapter_for"]
