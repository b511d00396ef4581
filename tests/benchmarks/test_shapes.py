"""The benchmark shapes keep what their comments promise."""

from __future__ import annotations

from benchmarks.shapes import SHAPES


def test_wide_shape_keeps_the_real_block_and_the_lens_share():
    real, wide = SHAPES["llava-1.5-7b"], SHAPES["llava-1.5-wide"]
    block = ("hidden", "intermediate", "heads", "kv_heads", "image_px", "family")
    assert {k: getattr(wide, k) for k in block} == {k: getattr(real, k) for k in block}
    assert not wide.gpu_only and wide.layers < real.layers
    # vocab scaled with depth: a lens costs the same share of a step
    assert wide.vocab / wide.layers == real.vocab / real.layers
