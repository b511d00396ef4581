"""Rows-only prefill passes: they stop after the last block they keep, and keep what a whole pass keeps."""

from __future__ import annotations

import pytest
import torch

from mllm_refine.adapter_lookup import adapter_for
from mllm_refine.engine.prefill import prefill
from tests.conftest import make_samples


class BlockCalls:
    """Counts the forwards of every decoder block while installed."""

    def __init__(self, adapter):
        self.calls = [0] * len(adapter.decoder_layers)
        self.handles = [
            block.register_forward_pre_hook(lambda *_, i=i: self.calls.__setitem__(i, self.calls[i] + 1))
            for i, block in enumerate(adapter.decoder_layers)
        ]

    def remove(self):
        for h in self.handles:
            h.remove()


def test_rows_only_pass_keeps_the_rows_of_a_whole_pass(tiny):
    _, model, processor = tiny
    adapter = adapter_for(model, processor)
    samples = make_samples(3)  # different sizes and questions: left padding in the batch
    L = len(adapter.decoder_layers)
    layers = [1, L // 2]
    with torch.no_grad():
        whole = prefill(model, adapter, samples, layers)
        rows_only = prefill(model, adapter, samples, layers, logits=False)
    assert whole.logits is not None and rows_only.logits is None
    assert set(rows_only.rows) == set(layers)
    for layer in layers:
        torch.testing.assert_close(rows_only.rows[layer], whole.rows[layer], atol=0, rtol=0)


@pytest.mark.parametrize("logits", [False, True])
def test_rows_only_pass_skips_the_blocks_above_its_last_layer(tiny, logits):
    _, model, processor = tiny
    adapter = adapter_for(model, processor)
    L = len(adapter.decoder_layers)
    layer = L // 2
    counter = BlockCalls(adapter)
    try:
        with torch.no_grad():
            prefill(model, adapter, make_samples(2), [layer], logits=logits)
            ran = list(counter.calls)
            counter.calls[:] = [0] * L
            prefill(model, adapter, make_samples(2), [layer])  # the stop leaves nothing behind
    finally:
        counter.remove()
    assert ran == ([1] * L if logits else [1] * layer + [0] * (L - layer))
    assert counter.calls == [1] * L
