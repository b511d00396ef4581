"""Tiny random Qwen2-VL, Qwen2.5-VL and Qwen3-VL: patch 8, merge 2, a few merged tokens per image.

Images are resized to multiples of 16 px within 16 x 16 .. 64 x 64 pixels, so one image is a
merged grid of at most 4 x 4 tokens. The language model is the shared 6-block one with
multimodal rotary positions (``mrope_section`` splits its head_dim / 2 = 8 frequencies).
"""

from __future__ import annotations

from typing import Any

from mllm_refine.lazy import torch, transformers
from mllm_refine.processors import image_only_class
from mllm_refine.testing.tiny_common import INIT_RANGE, text_config
from mllm_refine.testing.tiny_tokenizer import tiny_tokenizer

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATCH, MERGE = 8, 2


def _qwen(
    classes: tuple[type, type, type], vision: dict[str, Any], text: dict[str, Any], seed: int, dtype: torch.dtype | None
) -> tuple[Any, Any]:
    """Build ``(model, processor)`` from ``(config, model, processor)`` classes and family sizes."""
    config_class, model_class, processor_class = classes
    tok = tiny_tokenizer(QWEN_SPECIALS)
    tok.eos_token = "<|im_end|>"
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    vision = dict(depth=2, num_heads=4, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2, **vision)
    config = config_class(
        text_config=text_config(len(tok), tok.pad_token_id, eos_token_id=tok.eos_token_id, **text),
        vision_config=dict(initializer_range=INIT_RANGE, **vision),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_class(config).to(dtype or torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=16 * 16, max_pixels=64 * 64, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
    )
    # Without the video processor, which needs torchvision; images and text need only these two.
    processor = image_only_class(processor_class)(image_processor, tok, chat_template=QWEN_TEMPLATE)
    return model, processor


def tiny_qwen2_vl(seed: int = 0, dtype: torch.dtype | None = None) -> tuple[transformers.Qwen2VLForConditionalGeneration, Any]:
    """Qwen2-VL layout: 2-block ViT (32 wide) with patch merger, Qwen2 text model with mrope."""
    classes = (transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor)
    vision = dict(embed_dim=32, hidden_size=64, mlp_ratio=2)
    text = dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]))
    return _qwen(classes, vision, text, seed, dtype)


def tiny_qwen2_5_vl(
    seed: int = 0, dtype: torch.dtype | None = None
) -> tuple[transformers.Qwen2_5_VLForConditionalGeneration, Any]:
    """Qwen2.5-VL layout: windowed ViT (32 px windows = 2 x 2 merged tokens; block 2 global)."""
    classes = (transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor)
    vision = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=32, fullatt_block_indexes=[1])
    text = dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]))
    return _qwen(classes, vision, text, seed, dtype)


def tiny_qwen3_vl(seed: int = 0, dtype: torch.dtype | None = None) -> tuple[transformers.Qwen3VLForConditionalGeneration, Any]:
    """Qwen3-VL layout: ViT with a learned 4 x 4 position grid whose blocks 1-2 feed deepstack
    features into the outputs of text blocks 1-2; Qwen3 text model with interleaved mrope."""
    classes = (transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration, transformers.Qwen3VLProcessor)
    vision: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64, num_position_embeddings=16)
    vision["deepstack_visual_indexes"] = [0, 1]
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
    return _qwen(classes, vision, dict(rope_parameters=rope, head_dim=16), seed, dtype)
