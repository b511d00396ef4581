"""Sizes shared by the tiny models of every family."""

from __future__ import annotations

from typing import Any

from mllm_refine.lazy import transformers

# Large init keeps logit gaps wide, so greedy choices are stable under float reordering.
INIT_RANGE = 0.2


def text_config(vocab_size: int, pad_id: int, **overrides: Any) -> dict[str, Any]:
    """A 6-block language model: 64 wide, 4 query heads sharing 2 key/value heads."""
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=INIT_RANGE,
        pad_token_id=pad_id,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    return cfg


def clip_vision_config() -> transformers.CLIPVisionConfig:
    """CLIP ViT at 32 px with patch 8: a 4 x 4 patch grid (plus CLS)."""
    return transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
        initializer_range=INIT_RANGE,
    )
