"""Loading a model and its processor: a registered name, a local checkpoint folder, or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mllm_refine.lazy import torch
from mllm_refine.plugin_manager import get_registry
from mllm_refine.processors import load_processor

DTYPES = ("float32", "bfloat16", "float16")


class ModelLoadError(ValueError):
    pass


_remote_code_allowed = False  # set by the command line's --trust-remote-code


def allow_remote_code(allowed: bool) -> None:
    """Record the command line's ``--trust-remote-code``; one half of the double opt-in."""
    global _remote_code_allowed
    _remote_code_allowed = bool(allowed)


def check_remote_code(model: dict[str, Any], source: str) -> None:
    """A checkpoint's own Python code runs only when the recipe (``model.trust_remote_code:
    true``) and the command line (``--trust-remote-code``) both ask for it; either alone is
    keeps it off, so neither a shared recipe nor a habit of typing the flag runs code unasked."""
    in_recipe = model.get("trust_remote_code") is True
    if in_recipe and not _remote_code_allowed:
        raise ModelLoadError(
            f"{source}: model.trust_remote_code: true runs the checkpoint's own code; "
            "it also needs --trust-remote-code on the command line"
        )


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"model.dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def check_model_path(path: str) -> None:
    """Fail early, before any weights load, on a local checkpoint folder that is not there."""
    if path in get_registry().entries.get("model", {}):
        return
    folder = Path(path).expanduser()
    looks_local = folder.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local:
        if folder.is_file():
            raise ModelLoadError(f"model.path: {folder} is a file; a checkpoint is the folder that holds config.json and the weights")
        if not folder.is_dir():
            raise ModelLoadError(f"model.path: checkpoint folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model.path: {folder} has no config.json (not a transformers checkpoint folder)")
        check_model_type(folder)


def check_model_type(folder: Path) -> None:
    """Refuse, before the weights load, a checkpoint whose ``model_type`` no adapter knows."""
    import json

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelLoadError(f"model.path: {folder / 'config.json'}: not a readable JSON config ({e})") from e
    adapters = get_registry().entries.get("adapter", {}).values()
    if model_type not in {t for a in adapters for t in a.obj.model_types}:
        supported = ", ".join(sorted(t for a in adapters for t in a.obj.model_types))
        raise ModelLoadError(
            f"model.path: {folder}: model type {model_type!r} is not supported; supported model types: {supported}"
        )


def load_model(
    path: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """``(model, processor)`` in eval mode with sdpa attention. ``trust_remote_code`` stays off
    unless the caller turns it on."""
    if trust_remote_code and not _remote_code_allowed:
        raise ModelLoadError("model.trust_remote_code: true also needs --trust-remote-code on the command line")
    torch_dtype = resolve_dtype(dtype)
    models = get_registry().entries.get("model", {})
    model: Any  # a transformers model
    if path in models:
        model, processor = models[path].obj(dtype=torch_dtype)
        return model.to(device).eval(), processor
    check_model_path(path)
    from transformers import AutoModelForImageTextToText

    try:
        # The processor first: it is cheap, and a folder it cannot be built from fails before the weights load.
        processor = load_processor(path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch_dtype, attn_implementation="sdpa", trust_remote_code=trust_remote_code
        )
    except (ImportError, OSError, ValueError, TypeError) as e:  # ImportError: a backend a part needs is missing
        raise ModelLoadError(f"model.path: cannot load {path!r}: {_first_line(e)}") from e
    return model.to(device).eval(), processor


def _first_line(e: BaseException) -> str:
    """The error's first line; for a missing backend, its first sentence (transformers goes on
    over several lines of install instructions, breaking the first one mid-sentence)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    first = text.splitlines()[0]
    if isinstance(e, ImportError) and ". " in first:
        first = first.split(". ", 1)[0]
    return first
