"""The growing KV cache: the same keys and values as transformers' DynamicCache, written in place."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers.cache_utils import DynamicLayer

from mllm_refine.engine.kv_cache import GrowingCache, GrowingLayer, growing_cache


def _updates(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A prefill of 5 positions, then 7 decode steps of 1: (B=2, H=3, n, Dh=4) keys, Dh=5 values."""
    g = torch.Generator().manual_seed(seed)
    sizes = [5] + [1] * 7
    return [(torch.randn(2, 3, n, 4, generator=g), torch.randn(2, 3, n, 5, generator=g)) for n in sizes]


def test_growing_layer_holds_what_dynamic_layer_holds():
    grow, plain = GrowingLayer(capacity=6, limit=12), DynamicLayer()
    for k, v in _updates():
        gk, gv = grow.update(k, v)
        pk, pv = plain.update(k, v)
        assert torch.equal(gk, pk) and torch.equal(gv, pv)
        assert grow.get_seq_length() == plain.get_seq_length()


def test_a_step_writes_in_place_and_the_buffer_grows_once_up_to_the_limit():
    layer = GrowingLayer(capacity=6, limit=12)
    buffers = []
    for k, v in _updates():
        keys, _ = layer.update(k, v)
        buffers.append(keys.data_ptr())
    # Positions 1..6 fit the first buffer; the 7th doubles it to 12 (the limit), which holds the rest.
    assert len(set(buffers)) == 2
    assert buffers[:2] == [buffers[0]] * 2 and len(set(buffers[2:])) == 1
    assert layer._buffers is not None and layer._buffers[0].shape[-2] == 12


def test_a_replaced_cache_is_copied_into_a_new_buffer():
    layer, plain = GrowingLayer(capacity=16), DynamicLayer()
    steps = _updates()
    for k, v in steps[:4]:
        layer.update(k, v)
        plain.update(k, v)
    layer.crop(-2)  # DynamicLayer's crop replaces the views: the next update must start from them
    plain.crop(-2)
    k, v = steps[4]
    gk, gv = layer.update(k, v)
    pk, pv = plain.update(k, v)
    assert torch.equal(gk, pk) and torch.equal(gv, pv)


def test_growing_cache_per_block_and_none_with_sliding_windows():
    config = SimpleNamespace(num_hidden_layers=3, layer_types=["full_attention"] * 3)
    cache = growing_cache(config, prompt_length=40, new_tokens=500)
    assert isinstance(cache, GrowingCache) and len(cache.layers) == 3
    assert cache.layers[0].capacity == 40 + 128 and cache.layers[0].limit == 540
    short = growing_cache(config, prompt_length=40, new_tokens=8)
    assert short is not None and short.layers[0].capacity == 48
    sliding = SimpleNamespace(num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"])
    assert growing_cache(sliding, 40, 8) is None


def test_with_room_gives_the_zero_tailed_buffers_of_the_handed_views_only():
    layer = GrowingLayer(capacity=9, limit=20)
    steps = _updates()
    for k, v in steps[:2]:  # 5 + 1 positions written: one buffer of 9, 4 positions unwritten
        keys, values = layer.update(k, v)
    assert layer.with_room(keys.clone(), values) is None  # not the handed view
    rooms = layer.with_room(keys, values)
    assert rooms is not None
    k_buf, v_buf = rooms
    assert k_buf.shape == (2, 3, 9, 4) and v_buf.shape == (2, 3, 9, 5)
    assert torch.equal(k_buf[:, :, :6], keys) and torch.equal(v_buf[:, :, :6], values)
    assert not k_buf[:, :, 6:].any() and not v_buf[:, :, 6:].any()
    keys, values = layer.update(*steps[2])  # written in place: the buffer holds it, the rest stays zero
    again = layer.with_room(keys, values)
    assert again is not None and again[0] is k_buf and torch.equal(k_buf[:, :, :7], keys) and not k_buf[:, :, 7:].any()
    layer.crop(-2)  # a replaced view is not the buffer's any more
    assert layer.with_room(layer.keys, layer.values) is None
    cache = GrowingCache(num_layers=2, capacity=8)
    k, v = steps[0]
    ck, cv = cache.update(k, v, 1)
    assert cache.with_room(1, ck, cv) is not None and cache.with_room(0, ck, cv) is None
