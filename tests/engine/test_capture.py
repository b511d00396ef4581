"""Probes capture only what was declared, in linear memory, and match an eager reference."""

from __future__ import annotations

import pytest
import torch

from mllm_refine.components import LayerSelector, LogitCombiner, Needs
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.capture import Capture, row_output, row_scores
from mllm_refine.testing.tiny_models import tiny_llava


class Recorder(LayerSelector):
    """Declares attention at some blocks and hidden states at others; keeps what it saw."""

    name = "recorder"

    def __init__(self, attention: set[int], hidden: set[int]):
        self.attention, self.hidden = attention, hidden
        self.seen: list[dict] = []

    def candidates(self) -> list[int]:
        return sorted(self.hidden)

    def needs(self) -> Needs:
        return Needs(attention=frozenset(self.attention), hidden=frozenset(self.hidden))

    def select(self, view):
        self.seen.append(
            {
                "attention": dict(view.capture.attention),
                "renormalised": {l: view.attention(l) for l in self.attention},
                "hidden": dict(view.capture.hidden),
                "lens": {l: view.lens(l) for l in self.hidden},
                "logits": view.logits,
                "image_mask": view.image_mask,
            }
        )
        return torch.full((view.logits.shape[0],), -1)


class Passthrough(LogitCombiner):
    name = "passthrough"

    def combine(self, view, layer):
        return view.logits


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def _run(llava, samples, attention, hidden):
    model, processor = llava
    rec = Recorder(attention, hidden)
    decoder = Decoder(model, processor, Parts(layer_selector=rec, logit_combiner=Passthrough()), DecodeConfig(max_new_tokens=3))
    preds = decoder.generate(samples)
    return model, decoder, rec, preds


def test_probes_hold_only_declared_slices(llava, samples):
    model, decoder, rec, _ = _run(llava, samples, attention={2, 5}, hidden={3, 6})
    B, H, I = len(samples), model.config.text_config.num_attention_heads, 16
    D = model.config.text_config.hidden_size
    for step in rec.seen:
        assert set(step["attention"]) == {2, 5} and set(step["hidden"]) == {3, 6}
        for a in step["attention"].values():
            assert a.shape == (B, H, I)  # never (B, H, T, T)
        for h in step["hidden"].values():
            assert h.shape == (B, D)
    # The rows came through refine_attention; after the request the model's own sdpa is back.
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not model.config.text_config.output_attentions


def test_vanilla_captures_nothing(llava, samples):
    model, processor = llava
    from mllm_refine.engine.capture import Capture

    decoder = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=2))
    assert decoder.needs.empty
    decoder.generate(samples)
    for layer in decoder.adapter.decoder_layers:
        assert not hasattr(layer.self_attn, "_mllm_refine_capture")
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert Capture  # imported for the attribute name's owner


def test_attention_rows_are_distributions(llava, samples):
    _, _, rec, _ = _run(llava, samples, attention={1, 6}, hidden={6})
    for step in rec.seen:
        for layer, raw in step["attention"].items():
            mass = raw.sum(-1)  # (B, H): share of the row on image tokens
            assert (mass > 0).all() and (mass <= 1 + 1e-5).all()
            torch.testing.assert_close(step["renormalised"][layer].sum(-1), torch.ones_like(mass))


def test_attention_row_matches_eager_reference(llava, samples):
    """The probed row equals eager attention's last row gathered at the image tokens."""
    model, decoder, rec, _ = _run(llava, samples[:1], attention={3}, hidden={6})
    inputs = decoder.adapter.prepare(samples[:1])
    model.config.text_config._attn_implementation = "eager"
    try:
        out = model(**inputs, output_attentions=True)
    finally:
        model.config.text_config._attn_implementation = "mllm_refine"
    eager = out.attentions[2][:, :, -1, :]  # block 3: (B, H, T)
    image = decoder.adapter.image_keys(inputs["input_ids"])[0]
    torch.testing.assert_close(rec.seen[0]["attention"][3][0], eager[0][:, image], atol=1e-5, rtol=1e-4)


def test_lens_of_last_block_is_final_logits(llava, samples):
    L = 6
    _, _, rec, _ = _run(llava, samples, attention=set(), hidden={L})
    for step in rec.seen:
        torch.testing.assert_close(step["lens"][L], step["logits"], atol=1e-4, rtol=1e-4)


def test_probed_decode_steps_give_sdpa_logits(llava, samples):
    """At a decode step a probed block's output comes from the probe's own row, not from sdpa:
    every step's logits must equal those of a run that probes nothing (padded batch included)."""
    blocks = llava[0].config.text_config.num_hidden_layers
    _, _, probed, _ = _run(llava, samples, attention=set(range(1, blocks + 1)), hidden=set())
    _, _, plain, _ = _run(llava, samples, attention=set(), hidden=set())
    assert len(probed.seen) == len(plain.seen) >= 2
    for a, b in zip(probed.seen, plain.seen):
        torch.testing.assert_close(a["logits"], b["logits"], atol=1e-5, rtol=1e-5)


def test_rows_over_the_whole_buffer_equal_rows_over_its_views():
    """``room``: the products run over a zero-tailed buffer and keep the first K positions; on
    small bfloat16 tensors they equal a hand computation in float32 of the same values."""
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, K, C, Dh = 2, 4, 2, 5, 8, 3  # grouped heads: 2 query heads per key head
    k_buf = torch.zeros(B, Hkv, C, Dh, dtype=torch.bfloat16)
    v_buf = torch.zeros_like(k_buf)
    k_buf[:, :, :K] = torch.randn(B, Hkv, K, Dh, generator=g).bfloat16()
    v_buf[:, :, :K] = torch.randn(B, Hkv, K, Dh, generator=g).bfloat16()
    key, value = k_buf[:, :, :K], v_buf[:, :, :K]
    query = torch.randn(B, H, 1, Dh, generator=g).bfloat16()
    scores = row_scores(query, key, 0.5, k_buf)  # (B, H, K)
    kf = key.float().repeat_interleave(H // Hkv, dim=1)  # (B, H, K, Dh)
    hand = 0.5 * (query.float() * kf).sum(-1)  # (B, H, K)
    torch.testing.assert_close(scores, hand, atol=2e-2, rtol=2e-2)  # the product rounds to bfloat16
    assert scores.shape == (B, H, K) and scores.dtype == torch.float32 and scores.is_contiguous()
    assert torch.equal(scores, row_scores(query, key, 0.5))
    probs = torch.softmax(scores, -1)
    row = row_output(probs, value, None, torch.bfloat16, v_buf)  # (B, 1, H, Dh)
    vf = value.float().repeat_interleave(H // Hkv, dim=1)  # (B, H, K, Dh)
    hand_row = (probs.bfloat16().float()[..., None] * vf).sum(-2)  # (B, H, Dh)
    torch.testing.assert_close(row[:, 0].float(), hand_row, atol=2e-2, rtol=2e-2)
    assert torch.equal(row, row_output(probs, value, None, torch.bfloat16))


def test_bfloat16_decoding_reads_the_cache_buffers_and_keeps_its_tokens(samples, monkeypatch):
    """A bfloat16 model on a CPU takes its probed rows over the growing cache's buffers: the same
    tokens and probed rows as over the views, on a padded batch."""
    model, processor = tiny_llava(dtype=torch.bfloat16)
    blocks = model.config.text_config.num_hidden_layers
    rooms = Capture.rooms
    used: list[bool] = []

    def counted(self, module, key, value):
        got = rooms(self, module, key, value)
        used.append(got[0] is not None)
        return got

    def run():
        rec = Recorder(set(range(1, blocks + 1)), set())
        decoder = Decoder(model, processor, Parts(layer_selector=rec, logit_combiner=Passthrough()), DecodeConfig(max_new_tokens=4))
        return rec, decoder.generate(samples)

    monkeypatch.setattr(Capture, "rooms", counted)
    with_rooms, preds = run()
    assert used and all(used)  # every probed call, prefill and decode, found its block's buffers
    monkeypatch.setattr(Capture, "rooms", lambda self, module, key, value: (None, None))
    plain, plain_preds = run()
    assert [p.text for p in preds] == [p.text for p in plain_preds]
    assert len(with_rooms.seen) == len(plain.seen) >= 2
    for a, b in zip(with_rooms.seen, plain.seen):
        for layer in a["attention"]:
            assert torch.equal(a["attention"][layer], b["attention"][layer])


def test_the_samples_without_an_image_are_known_once_at_begin():
    image_id = 9
    adapter = type("Adapter", (), {"image_keys": staticmethod(lambda ids: ids == image_id)})()
    capture = Capture(adapter, Needs(), [])
    capture.begin(torch.tensor([[1, 9, 9, 2], [1, 2, 3, 4], [9, 1, 2, 3]]))  # (B=3, T=4); sample 1: text only
    assert capture.no_image.tolist() == [False, True, False]
    capture.begin(torch.tensor([[1, 9, 9, 2], [9, 1, 2, 3]]))  # every sample has an image
    assert capture.no_image is None
