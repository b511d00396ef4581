"""Each family's adapter: where things live, its image-token spans and grids, and the logit lens."""

from __future__ import annotations

import pytest
import torch
from adapter_doubles import Probe
from transformers import LlamaConfig, LlamaForCausalLM

from mllm_refine.adapter_lookup import UnsupportedModelError, adapter_for
from mllm_refine.adapters import (
    BUILTIN_ADAPTERS,
    LlavaAdapter,
    LlavaNextAdapter,
    ModelAdapter,
    Qwen2_5_VLAdapter,
    Qwen2VLAdapter,
    Qwen3VLAdapter,
)
from mllm_refine.data.sample import Sample
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.testing.tiny_models import TINY_MODELS, tiny_llava_next
from mllm_refine.testing.tiny_qwen import tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl

ADAPTERS = {
    "tiny-llava": LlavaAdapter,
    "tiny-llava-next": LlavaNextAdapter,
    "tiny-qwen2-vl": Qwen2VLAdapter,
    "tiny-qwen2.5-vl": Qwen2_5_VLAdapter,
    "tiny-qwen3-vl": Qwen3VLAdapter,
}

QWEN = ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl")

# Grids of the conftest images, (h, w) = (40, 48), (32, 32), (56, 40), (48, 64):
# LLaVA: a 4 x 4 patch grid each.
# LLaVA-NeXT: base 4 x 4, then the unpadded tiles: (40, 48) -> 2 x 2 tiles = 8 x 8 patches, 40 / 48 * 8
#   = 6.67 -> 6 rows (one padded row cut at each side); (32, 32) -> one tile, 4 x 4; (56, 40) -> 8 x 8 with
#   6 columns; (48, 64) -> 8 x 8 with 6 rows. Plus one newline per packed row.
# Qwen: each side rounded to a multiple of 16 px (40 -> 32, 56 -> 64), one merged token per 16 x 16 px.
GRIDS = {
    "tiny-llava": [[(4, 4)]] * 4,
    "tiny-llava-next": [[(4, 4), (6, 8)], [(4, 4), (4, 4)], [(4, 4), (8, 6)], [(4, 4), (6, 8)]],
    **{name: [[(2, 3)], [(2, 2)], [(4, 2)], [(3, 4)]] for name in QWEN},
}
COUNTS = {
    "tiny-llava": [16, 16, 16, 16],
    "tiny-llava-next": [16 + 6 * 9, 16 + 4 * 5, 16 + 8 * 7, 16 + 6 * 9],
    **{name: [6, 4, 8, 12] for name in QWEN},
}


def _grid_tokens(adapter: ModelAdapter, grids: list[tuple[int, int]]) -> int:
    ends = adapter.row_end_tokens * (len(grids) // len(adapter.row_end_tokens))
    return sum(r * (c + n) for (r, c), n in zip(grids, ends))


def test_tiny_models_and_adapters_cover_the_same_families():
    assert set(TINY_MODELS) == set(ADAPTERS)
    assert set(ADAPTERS.values()) == set(BUILTIN_ADAPTERS)


def test_adapter_for_picks_the_family(tiny):
    name, model, processor = tiny
    adapter = adapter_for(model, processor)
    assert type(adapter) is ADAPTERS[name]
    config = model.config.get_text_config()
    L = config.num_hidden_layers
    assert len(adapter.decoder_layers) == L
    for layer in range(1, L + 1):
        assert adapter.attention_module(layer).layer_idx == layer - 1
    assert adapter.lm_head is model.get_output_embeddings()
    assert adapter.text_config is config
    info = adapter.info()
    assert (info.num_layers, info.num_heads, info.num_kv_heads) == (L, 4, 2)
    assert (info.hidden_size, info.vocab_size, info.family) == (64, len(processor.tokenizer), adapter.name)
    assert adapter.image_token_ids == [model.config.image_token_id]


def test_unsupported_model_names_every_family():
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for(LlamaForCausalLM(config), None)
    message = str(err.value)
    assert "'llama'" in message and "LlamaForCausalLM" in message
    for cls in BUILTIN_ADAPTERS:
        assert cls.name in message
        for model_class in cls.model_classes:
            assert model_class in message


def test_image_span_per_sample(tiny, samples):
    name, model, processor = tiny
    adapter = adapter_for(model, processor)
    inputs = adapter.prepare(samples)
    keys = adapter.image_keys(inputs["input_ids"])  # (B, T)
    assert keys.sum(1).tolist() == COUNTS[name]
    # What the processor says it expands each image to, from the image size alone.
    sizes = [(im.height, im.width) for s in samples for im in s.images]
    assert processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens == COUNTS[name]
    for b in range(len(samples)):
        where = keys[b].nonzero().flatten()
        assert (where.diff() == 1).all()  # one image: one contiguous run
        assert inputs["attention_mask"][b, where].all()  # never in the left padding
    model(**inputs)  # the model itself accepts the spans (it checks features against tokens)


def test_image_grid_matches_image_tokens(tiny, samples):
    name, model, processor = tiny
    adapter = adapter_for(model, processor)
    inputs = adapter.prepare(samples)
    grids = adapter.image_grid(inputs)
    assert grids == GRIDS[name]
    counts = adapter.image_keys(inputs["input_ids"]).sum(1).tolist()
    assert [_grid_tokens(adapter, g) for g in grids] == counts


def test_image_grid_with_two_images_and_none(tiny, samples):
    name, model, processor = tiny
    adapter = adapter_for(model, processor)
    two = Sample(id="two", question="what is in the image?", images=[samples[3].images[0], samples[0].images[0]])
    inputs = adapter.prepare([samples[1], two])
    assert adapter.image_grid(inputs) == [GRIDS[name][1], GRIDS[name][3] + GRIDS[name][0]]
    text_only = adapter.prepare([Sample(id="t", question="what color is the sky?", images=[])] * 2)
    assert adapter.image_grid(text_only) == [[], []]


def test_adapter_without_a_grid_says_so():
    class NoGrid(ModelAdapter):
        name = "no_grid"

    inputs = {"input_ids": torch.zeros(1, 3, dtype=torch.long)}
    with pytest.raises(NotImplementedError, match="'no_grid' does not describe its image-token grid"):
        NoGrid(torch.nn.Module(), None).image_grid(inputs)


@pytest.mark.parametrize("factory", [tiny_qwen2_vl, tiny_qwen2_5_vl, tiny_qwen3_vl])
def test_qwen_grid_follows_rotary_positions(factory, samples):
    """Token k of a merged (rows, cols) grid is the cell whose mrope (h, w) ids are (k // cols, k % cols)."""
    model, processor = factory()
    adapter = adapter_for(model, processor)
    inputs = adapter.prepare(samples)
    pos, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )  # (3, B, T): temporal, height, width ids
    keys = adapter.image_keys(inputs["input_ids"])
    for b, [(rows, cols)] in enumerate(adapter.image_grid(inputs)):
        h, w = pos[1, b, keys[b]], pos[2, b, keys[b]]  # (I,)
        k = torch.arange(rows * cols)
        assert (h - h.min()).tolist() == (k // cols).tolist()
        assert (w - w.min()).tolist() == (k % cols).tolist()


def test_llava_next_newline_ends_each_packed_row(samples):
    """The model's own packed features hold image_newline exactly where the grid puts row ends."""
    model, processor = tiny_llava_next()
    adapter = adapter_for(model, processor)
    inputs = adapter.prepare(samples)
    features = model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
    ).pooler_output  # per image: (tokens, D)
    newline = model.model.image_newline  # (D,)
    for feats, [(base_r, base_c), (rows, cols)] in zip(features, adapter.image_grid(inputs)):
        is_newline = (feats == newline).all(-1)  # (tokens,)
        expected = torch.zeros(base_r * base_c + rows * (cols + 1), dtype=torch.bool)
        expected[base_r * base_c + cols :: cols + 1] = True  # after each row of `cols` features
        assert is_newline.tolist() == expected.tolist()


def test_lens_of_last_block_is_final_logits(tiny, samples):
    _, model, processor = tiny
    L = model.config.get_text_config().num_hidden_layers
    probe = Probe(hidden={L - 1, L})
    Decoder(model, processor, Parts(logit_combiner=probe), DecodeConfig(max_new_tokens=3)).generate(samples)
    assert len(probe.steps) == 3
    for step in probe.steps:
        torch.testing.assert_close(step["lens"][L], step["logits"], atol=1e-4, rtol=1e-4)
        # The check can tell layers and the norm apart.
        assert not torch.allclose(step["lens"][L - 1], step["logits"], atol=1e-2)
        assert not torch.allclose(step["lens_no_norm"][L], step["logits"], atol=1e-2)
