"""The decode engine. Names are imported on first use, so that reading a recipe's decode settings
(``mllm_refine.engine.config``) does not import the model code."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_NAMES = {
    "DecodeConfig": "mllm_refine.engine.config",
    "Decoder": "mllm_refine.engine.decoder",
    "Prediction": "mllm_refine.engine.decoder",
    "ConflictError": "mllm_refine.engine.parts",
    "Parts": "mllm_refine.engine.parts",
    "StepView": "mllm_refine.engine.step_view",
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'mllm_refine.engine' has no attribute {name!r}")
    return getattr(import_module(_NAMES[name]), name)


__all__ = ["ConflictError", "DecodeConfig", "Decoder", "Parts", "Prediction", "StepView"]
