"""The attention probe, head filters and the DualPD parts on every family."""

from __future__ import annotations

import torch
from adapter_doubles import Probe, RowSums

from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine_plugins.dualpd import HeadNormFilter, HellingerShiftSelector
from mllm_refine_plugins.layer_contrast import LayerContrastCombiner

STEPS = 3


def _layers(model) -> list[int]:
    return list(range(1, model.config.get_text_config().num_hidden_layers + 1))


def test_attention_rows_are_distributions(tiny, samples):
    _, model, processor = tiny
    layers = _layers(model)
    probe, sums = Probe(attention=set(layers)), RowSums(layers)
    parts = Parts(head_filters=[sums], logit_combiner=probe)
    Decoder(model, processor, parts, DecodeConfig(max_new_tokens=STEPS)).generate(samples)
    assert len(probe.steps) == STEPS and len(sums.sums) == STEPS * len(layers)
    for step in probe.steps:
        assert step["captured"] == set(layers)  # the registered function ran in every block
        slots = step["image_mask"][:, None, :]  # (B, 1, I)
        for layer in layers:
            raw = step["raw"][layer]  # (B, H, I)
            mass = raw.sum(-1)  # (B, H): share of the row on image tokens
            assert (mass > 0).all() and (mass <= 1 + 1e-5).all()
            assert (raw * ~slots).abs().max() == 0  # slots past a sample's image tokens stay empty
            torch.testing.assert_close(step["renormalised"][layer].sum(-1), torch.ones_like(mass))
    for total, padded in zip(sums.sums, sums.padding):  # over ALL keys of the probed row
        torch.testing.assert_close(total, torch.ones_like(total))
        assert padded.abs().max() == 0


def test_prefill_row_matches_eager_attention(tiny, samples):
    """The probed last row equals eager attention's, for the family's own rotary positions and masks."""
    _, model, processor = tiny
    layers = [1, 4]
    probe = Probe(attention=set(layers), prefill=set(layers))
    decoder = Decoder(model, processor, Parts(logit_combiner=probe), DecodeConfig(max_new_tokens=1))
    decoder.generate(samples)
    inputs = decoder.adapter.prepare(samples)
    config = model.config.get_text_config()
    used, config._attn_implementation = config._attn_implementation, "eager"
    try:
        out = model(**inputs, output_attentions=True)
    finally:
        config._attn_implementation = used
    valid = inputs["attention_mask"].bool()[:, None, :]  # (B, 1, T)
    keys = decoder.adapter.image_keys(inputs["input_ids"])  # (B, T)
    for layer in layers:
        eager = out.attentions[layer - 1][:, :, -1, :]  # (B, H, T)
        row = probe.steps[0]["prefill"][layer]  # (B, H, T)
        torch.testing.assert_close(row * valid, eager * valid, atol=1e-5, rtol=1e-4)
        for b in range(len(samples)):
            got = probe.steps[0]["raw"][layer][b][:, : int(keys[b].sum())]  # (H, I_b)
            torch.testing.assert_close(got, eager[b][:, keys[b]], atol=1e-5, rtol=1e-4)


def test_identity_filter_keeps_vanilla_tokens(tiny, samples):
    """Recomputing the filtered row eagerly must not change a greedy answer."""
    _, model, processor = tiny
    config = DecodeConfig(max_new_tokens=8)
    vanilla = [p.tokens for p in Decoder(model, processor, Parts(), config).generate(samples)]
    parts = Parts(head_filters=[RowSums(_layers(model))])
    assert [p.tokens for p in Decoder(model, processor, parts, config).generate(samples)] == vanilla


def test_dualpd_batch_of_4_equals_4_of_1(tiny, samples):
    _, model, processor = tiny
    parts = Parts(
        layer_selector=HellingerShiftSelector(),
        head_filters=[HeadNormFilter()],
        logit_combiner=LayerContrastCombiner(),
    )
    decoder = Decoder(model, processor, parts, DecodeConfig(max_new_tokens=8))
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert [p.choices["layer"] for p in batched] == [p.choices["layer"] for p in single]
    candidates = set(parts.layer_selector.candidates())
    for p in batched:
        assert p.tokens and set(p.choices["layer"]) <= candidates
        assert p.choices["head_norm_filter.heads"]  # heads suppressed in every block
