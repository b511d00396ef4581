"""Tiny random models of every supported family, built offline from transformers configs.

They exercise the real model classes and processors at toy sizes; tests and the conformance
kit use them, and recipes may name them as ``model.path`` (``tiny-llava``, ...).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from mllm_refine.hookspecs import hookimpl
from mllm_refine.testing.tiny_tokenizer import tiny_tokenizer

# Large init keeps logit gaps wide, so greedy choices are stable under float reordering.
INIT_RANGE = 0.2

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: "
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} </s> "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _text_config(vocab_size: int, pad_id: int, **overrides: Any) -> dict[str, Any]:
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


def tiny_llava(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[LlavaForConditionalGeneration, Any]:
    """LLaVA-1.5 layout: CLIP ViT (32 px, patch 8 -> 16 image tokens), MLP projector, Llama."""
    tok = tiny_tokenizer(["<image>"])
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
        initializer_range=INIT_RANGE,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=LlamaConfig(**_text_config(len(tok), tok.pad_token_id)).to_dict(),
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor


TINY_MODELS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "tiny-llava": tiny_llava,
}


@hookimpl
def register_models(register: Callable[[str, Callable], None]) -> None:
    for name, factory in TINY_MODELS.items():
        register(name, factory)
