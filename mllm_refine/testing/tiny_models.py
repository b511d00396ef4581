"""Tiny random models of every supported family, built offline from transformers configs.

They exercise the real model classes and processors at toy sizes; tests and the conformance
kit use them, and recipes may name them as ``model.path`` (``tiny-llava``, ...).
"""

from __future__ import annotations

from typing import Any, Callable

from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch, transformers
from mllm_refine.testing.tiny_common import INIT_RANGE, clip_vision_config, text_config
from mllm_refine.testing.tiny_qwen import tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl
from mllm_refine.testing.tiny_tokenizer import tiny_tokenizer

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: "
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} </s> "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# LLaVA-NeXT "anyres" resolutions (height, width): 1 x 1, 1 x 2, 2 x 1 and 2 x 2 tiles of 32 px.
NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def tiny_llava(seed: int = 0, dtype: torch.dtype | None = None) -> tuple[transformers.LlavaForConditionalGeneration, Any]:
    """LLaVA-1.5 layout: CLIP ViT (32 px, patch 8 -> 16 image tokens), MLP projector, Llama."""
    tok = tiny_tokenizer(["<image>"])
    config = transformers.LlavaConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config=transformers.LlamaConfig(**text_config(len(tok), tok.pad_token_id)).to_dict(),
        image_token_index=tok.get_vocab()["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model: Any = transformers.LlavaForConditionalGeneration(config)
    model = model.to(dtype or torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor


def tiny_llava_next(seed: int = 0, dtype: torch.dtype | None = None) -> tuple[transformers.LlavaNextForConditionalGeneration, Any]:
    """LLaVA-NeXT layout: LLaVA's towers plus anyres tiles of 32 px (up to 2 x 2) and image_newline.

    An image gives a 4 x 4 base grid plus its unpadded tiles and newlines: 36..88 image tokens.
    """
    tok = tiny_tokenizer(["<image>"])
    config = transformers.LlavaNextConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config=transformers.LlamaConfig(**text_config(len(tok), tok.pad_token_id)).to_dict(),
        image_token_index=tok.get_vocab()["<image>"],
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model: Any = transformers.LlavaNextForConditionalGeneration(config)
    model = model.to(dtype or torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=NEXT_PINPOINTS
    )
    processor = transformers.LlavaNextProcessor(
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
    "tiny-llava-next": tiny_llava_next,
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-qwen2.5-vl": tiny_qwen2_5_vl,
    "tiny-qwen3-vl": tiny_qwen3_vl,
}


@hookimpl
def register_models(register: Callable[[str, Callable], None]) -> None:
    for name, factory in TINY_MODELS.items():
        register(name, factory)


__all__ = [
    "INIT_RANGE",
    "LLAVA_TEMPLATE",
    "TINY_MODELS",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_qwen2_vl",
    "tiny_qwen2_5_vl",
    "tiny_qwen3_vl",
]
