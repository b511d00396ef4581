"""Loading a model and its processor: a registered name, a local checkpoint folder, or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    pass


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"model.dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_model_path(path: str) -> None:
    """Fail early, before any weights load, on a local checkpoint folder that is not there."""
    from mllm_refine.plugin_manager import get_registry

    if path in get_registry().entries.get("model", {}):
        return
    folder = Path(path).expanduser()
    looks_local = folder.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local:
        if not folder.is_dir():
            raise ModelLoadError(f"model.path: checkpoint folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model.path: {folder} has no config.json (not a transformers checkpoint folder)")


def load_model(
    path: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """``(model, processor)`` in eval mode with sdpa attention. ``trust_remote_code`` stays off
    unless the caller turns it on."""
    from mllm_refine.plugin_manager import get_registry

    torch_dtype = resolve_dtype(dtype)
    models = get_registry().entries.get("model", {})
    if path in models:
        model, processor = models[path].obj(dtype=torch_dtype)
        return model.to(device).eval(), processor
    check_model_path(path)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch_dtype, attn_implementation="sdpa", trust_remote_code=trust_remote_code
        )
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"model.path: cannot load {path!r}: {first}") from e
    return model.to(device).eval(), processor
