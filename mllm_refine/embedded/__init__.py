"""The embedded default model: a LLaVA whose language model is SmolLM2-135M-Instruct and whose
vision tower and projector were trained on easy-VQA (see docs/embedded.md)."""

from __future__ import annotations

from mllm_refine.embedded.assembly import assemble, assets_hash, default_model_path, load_default

__all__ = ["assemble", "assets_hash", "default_model_path", "load_default"]
