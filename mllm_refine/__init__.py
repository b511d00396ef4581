"""mllm-refine: training-free decoding strategies for multimodal LLMs, as composable plugins.

The public Python names are those in ``__all__``; plugin authors also use
``mllm_refine.components`` (the interfaces) and ``mllm_refine.hookimpl``. Names are imported on
first use, so ``import mllm_refine`` (and the command line's ``--help``) loads no model code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "Refiner": "mllm_refine.refiner",
    "Sample": "mllm_refine.data.sample",
    "Prediction": "mllm_refine.engine.decoder",
    "DecodeConfig": "mllm_refine.engine.config",
    "Recipe": "mllm_refine.recipes.loader",
    "RecipeError": "mllm_refine.recipes.schema",
    "load_recipe": "mllm_refine.recipes.loader",
    "load_model": "mllm_refine.models",
    "ModelLoadError": "mllm_refine.models",
    "hookimpl": "mllm_refine.hookspecs",
    "embedded_model_path": "mllm_refine.embedded.assembly",
}

_ALIASES = {"embedded_model_path": "default_model_path"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'mllm_refine' has no attribute {name!r}")
    value = getattr(import_module(_NAMES[name]), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = [
    "DecodeConfig",
    "ModelLoadError",
    "Prediction",
    "Recipe",
    "RecipeError",
    "Refiner",
    "Sample",
    "__version__",
    "embedded_model_path",
    "hookimpl",
    "load_model",
    "load_recipe",
]
