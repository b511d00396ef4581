"""Vanilla decoding equals transformers' greedy generate, and batching never changes an answer."""

from __future__ import annotations

from mllm_refine.engine import DecodeConfig, Decoder, Parts


def test_vanilla_equals_generate_batch_1_and_4(tiny, samples):
    _, model, processor = tiny
    decoder = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8))
    for batch in ([samples[0]], samples):
        inputs = decoder.adapter.prepare(batch)
        ref = model.generate(
            **inputs, do_sample=False, max_new_tokens=8, suppress_tokens=decoder.adapter.image_token_ids
        )
        ref_new = ref[:, inputs["input_ids"].shape[1] :].tolist()
        got = decoder.generate(batch)
        eos = decoder._eos_ids(decoder.generation_config())
        for r, g in zip(ref_new, got):
            n = next((i for i, t in enumerate(r) if t in eos), len(r))
            assert g.tokens == r[:n]


def test_vanilla_batch_of_4_equals_4_of_1(tiny, samples):
    _, model, processor = tiny
    decoder = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8))
    batched = [p.tokens for p in decoder.generate(samples)]
    single = [decoder.generate([s])[0].tokens for s in samples]
    assert batched == single
    assert len({tuple(t) for t in batched}) > 1  # the prompts really differ
