"""Random-weight models with the dimensions of real checkpoints, and the prompts that feed them.

Timing does not depend on weight values, so a model built from a transformers config with the
real sizes costs what the checkpoint costs. ``llava-1.5-7b`` and ``qwen2-vl-7b`` are the real
shapes (bf16, for a GPU); the ``-scaled`` shapes keep each layout's proportions that matter to
the methods (576 image tokens, MLP ratio, query/key-value head ratio, and the
vocabulary-to-model ratio that prices a logit lens) at a width and depth a CPU runs in minutes;
``llava-1.5-wide`` keeps the real block and cuts the depth, for a CPU that has the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from mllm_refine.data.sample import Sample
from mllm_refine.processors import image_only_class
from mllm_refine.testing.tiny_models import LLAVA_TEMPLATE
from mllm_refine.testing.tiny_qwen import QWEN_SPECIALS, QWEN_TEMPLATE
from mllm_refine.testing.tiny_tokenizer import WORDS, tiny_tokenizer

# Wide enough logit gaps that sdpa and eager attention pick the same greedy tokens in fp32.
INIT_RANGE = 0.1


@dataclass(frozen=True)
class Shape:
    """Sizes of one layout. ``vocab``: the model's vocabulary (the tokenizer stays word-level)."""

    family: str  # "llava" or "qwen2_vl"
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_px: int  # side of the square input image: 576 image tokens in every shape below
    dtype: str  # default dtype of the shape
    gpu_only: bool = False


SHAPES: dict[str, Shape] = {
    # LLaVA-1.5-7B: Llama-2-7B (4096 wide, 32 blocks, 32 heads) + CLIP ViT-L/14 at 336 px.
    "llava-1.5-7b": Shape("llava", 4096, 11008, 32, 32, 32, 32064, 1024, 24, 16, 336, "bfloat16", True),
    # Qwen2-VL-7B: 3584 wide, 28 blocks, 28 query / 4 key-value heads; ViT 1280 wide, 32 blocks.
    "qwen2-vl-7b": Shape("qwen2_vl", 3584, 18944, 28, 28, 4, 152064, 1280, 32, 16, 672, "bfloat16", True),
    # LLaVA-1.5-7B's own block (4096 wide, 32 heads of 128, MLP 11008) at 4 of its 32 blocks, for a
    # CPU: each block costs what a real one costs; vocab scaled with depth so a lens keeps its share.
    "llava-1.5-wide": Shape("llava", 4096, 11008, 4, 32, 32, 4008, 64, 2, 2, 336, "bfloat16"),
    # Scaled: width / 8, depth / 4; vocab scaled with width x depth so a lens costs the same share.
    "llava-1.5-scaled": Shape("llava", 256, 688, 8, 8, 8, 512, 64, 2, 2, 336, "float32"),
    "qwen2-vl-scaled": Shape("qwen2_vl", 896, 4736, 7, 7, 1, 1344, 64, 2, 2, 672, "float32"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _llava(shape: Shape, dtype: torch.dtype, seed: int) -> tuple[Any, Any]:
    tok = tiny_tokenizer(["<image>"])
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_px,
        patch_size=14,
        initializer_range=INIT_RANGE,
    )
    text = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=8192,
        initializer_range=INIT_RANGE,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = _instantiate(LlavaForConditionalGeneration, config, dtype, seed)
    px = shape.image_px
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": px}, crop_size={"height": px, "width": px}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _finish(model, tok, dtype), processor


def _qwen2_vl(shape: Shape, dtype: torch.dtype, seed: int) -> tuple[Any, Any]:
    tok = tiny_tokenizer(QWEN_SPECIALS)
    tok.eos_token = "<|im_end|>"
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = shape.hidden // shape.heads
    section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]  # 7B: [16, 24, 24] of 64
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=shape.vocab,
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            max_position_embeddings=32768,
            initializer_range=INIT_RANGE,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            rope_parameters=dict(rope_type="default", rope_theta=1_000_000.0, mrope_section=section),
        ),
        vision_config=dict(
            depth=shape.vision_layers,
            embed_dim=shape.vision_hidden,
            hidden_size=shape.hidden,
            num_heads=shape.vision_heads,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            initializer_range=INIT_RANGE,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = _instantiate(Qwen2VLForConditionalGeneration, config, dtype, seed)
    pixels = shape.image_px * shape.image_px
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = image_only_class(Qwen2VLProcessor)(image_processor, tok, chat_template=QWEN_TEMPLATE)
    return _finish(model, tok, dtype), processor


def _instantiate(model_class: type, config: Any, dtype: torch.dtype, seed: int) -> Any:
    """Random weights built directly in ``dtype`` on the GPU when there is one (7B in bf16 fits)."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            return model_class(config)
    finally:
        torch.set_default_dtype(default)


def _finish(model: Any, tok: Any, dtype: torch.dtype) -> Any:
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


BUILDERS: dict[str, Callable[[Shape, torch.dtype, int], tuple[Any, Any]]] = {"llava": _llava, "qwen2_vl": _qwen2_vl}


def build_shape(name: str, dtype: str | None = None, seed: int = 0) -> tuple[Any, Any, str]:
    """``(model, processor, dtype name)`` of a shape in ``SHAPES``; real shapes need CUDA."""
    shape = SHAPES[name]
    if shape.gpu_only and not torch.cuda.is_available():
        raise SystemExit(f"--shape {name}: a 7B model is timed on a GPU only; use llava-1.5-scaled on a CPU")
    dtype = dtype or shape.dtype
    model, processor = BUILDERS[shape.family](shape, DTYPES[dtype], seed)
    return model, processor, dtype


def image_px(processor: Any) -> int:
    """Side of the square images a processor expects (its crop, or its pixel budget)."""
    ip = processor.image_processor
    pixels = getattr(ip, "max_pixels", None) or (getattr(ip, "size", None) or {}).get("longest_edge")
    if getattr(ip, "merge_size", None) and pixels:
        return int(round(pixels**0.5))
    crop = getattr(ip, "crop_size", None) or {}
    return int(crop.get("height") or (getattr(ip, "size", None) or {}).get("shortest_edge") or 336)


def make_samples(n: int, images: int = 1, image_px: int = 336, words: int = 24, seed: int = 0) -> list[Sample]:
    """``n`` distinct samples: ``images`` random images each and a ``words``-word question."""
    rng = np.random.default_rng(seed)
    vocab = [w for w in WORDS if w.isalpha() and w.islower()]
    out = []
    for i in range(n):
        pics = [Image.fromarray(rng.integers(0, 255, (image_px, image_px, 3), dtype=np.uint8)) for _ in range(images)]
        question = " ".join(rng.choice(vocab, size=words)) + " ?"
        out.append(Sample(id=f"bench-{i}", question=question, images=pics))
    return out


def prompt_of_length(adapter: Any, length: int, px: int, seed: int = 0) -> tuple[Sample, int]:
    """A sample whose prompt is about ``length`` tokens: as many images as fit, then filler words."""

    def tokens(sample: Sample) -> int:
        return int(adapter.prepare([sample])["input_ids"].shape[1])

    one = make_samples(1, images=1, image_px=px, words=1, seed=seed)[0]
    per_image = int(adapter.image_keys(adapter.prepare([one])["input_ids"]).sum())
    images = max(1, (length - 64) // per_image)
    probe = make_samples(1, images=images, image_px=px, words=1, seed=seed)[0]
    words = max(1, length - tokens(probe) + 1)
    sample = make_samples(1, images=images, image_px=px, words=words, seed=seed)[0]
    return sample, tokens(sample)
