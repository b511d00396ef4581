"""The fixed architecture of the Qwen2.5-VL embedded model ``smollm2-135m-scenes-qwen``.

Its language model is SmolLM2-135M-Instruct mapped into the Qwen2 text layout. Llama and Qwen2
blocks compute the same function once the q/k/v biases that Qwen2 adds are zero, and M-RoPE
rotates every frequency section by the same position on text tokens (all three of a text token's
position ids are equal), so on text the mapped model is the Llama model exactly. The vision tower
and merger are Qwen2.5-VL's (windowed ViT, 2 x 2 patch merger) at a small size, trained by this
project on the easy-VQA scenes (see docs/embedded.md). Shared by the build script and assembly.
"""

from __future__ import annotations

import copy
from typing import Any

from mllm_refine.embedded import spec
from mllm_refine.lazy import torch

NAME = "smollm2-135m-scenes-qwen"
IMAGE_SIZE = 224  # the scenes' canvas: 16 x 16 patches of 14 px, merged 2 x 2 into 8 x 8 tokens
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH = 14, 2, 2
GRID = IMAGE_SIZE // (PATCH_SIZE * MERGE_SIZE)  # 8 merged tokens a side
SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# head_dim 64 -> 32 rotary frequencies, split over (time, height, width) as Qwen2.5-VL splits 64.
MROPE_SECTION = (8, 12, 12)
VISION = {
    "depth": 4,
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_heads": 3,
    "window_size": 112,  # 112 px windows: 4 x 4 merged tokens, so a 224 image has 4 windows
    "fullatt_block_indexes": [1, 3],
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# Qwen's markup around the image, no default system prompt (shorter prompts).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Adds Qwen's vision markers, a pad token, left padding and the chat template."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    tokenizer.pad_token = spec.PAD_TOKEN
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: Any) -> Any:
    """The Qwen2.5-VL processor at a fixed 224 x 224 input, without the video processor (which
    needs torchvision): the PIL image processor and the tokenizer are all images need."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    from mllm_refine.processors import image_only_class

    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH
    )
    return image_only_class(Qwen2_5_VLProcessor)(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(lm_config: Any, tokenizer: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` whose text part has SmolLM2's sizes, norm and rotary base."""
    from transformers import Qwen2_5_VLConfig

    lm = copy.deepcopy(lm_config).to_dict()
    theta = lm["rope_parameters"]["rope_theta"]
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": lm["hidden_size"],
        "intermediate_size": lm["intermediate_size"],
        "num_hidden_layers": lm["num_hidden_layers"],
        "num_attention_heads": lm["num_attention_heads"],
        "num_key_value_heads": lm["num_key_value_heads"],
        "hidden_act": lm["hidden_act"],
        "max_position_embeddings": lm["max_position_embeddings"],
        "rms_norm_eps": lm["rms_norm_eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": theta, "mrope_section": list(MROPE_SECTION)},
        "bos_token_id": lm["bos_token_id"],
        "eos_token_id": lm["eos_token_id"],
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = dict(VISION, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(vision, out_hidden_size=lm["hidden_size"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.pad_token_id = tokenizer.pad_token_id
    return config


def language_state(llama_state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """SmolLM2's ``LlamaForCausalLM`` weights under Qwen2.5-VL's names, with the zero q/k/v biases
    Qwen2 blocks carry and the embedding grown to ``vocab_size`` rows (new rows: the mean
    embedding, as in :func:`spec.add_image_token_row`). ``lm_head`` is tied to the embedding."""
    out: dict[str, torch.Tensor] = {}
    for key, value in llama_state.items():
        if not key.startswith("model."):
            continue  # lm_head.weight: the tied embedding
        name = "model.language_model." + key[len("model.") :]
        if key == "model.embed_tokens.weight":
            extra = vocab_size - value.shape[0]  # (V0, D) -> (V, D)
            value = torch.cat([value, value.mean(0, keepdim=True).expand(extra, -1)]) if extra > 0 else value
        out[name] = value
        if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            out[name[: -len("weight")] + "bias"] = torch.zeros(value.shape[0], dtype=value.dtype)
    return out


def new_model(lm: Any, tokenizer: Any, seed: int = 0) -> Any:
    """A ``Qwen2_5_VLForConditionalGeneration`` with SmolLM2 as its language model and a freshly
    initialised (seeded) vision tower and merger."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = build_config(lm.config, tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(language_state(lm.state_dict(), len(tokenizer)), strict=False)
    missing = [k for k in missing if not k.startswith("model.visual.") and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"language model mapping mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model
