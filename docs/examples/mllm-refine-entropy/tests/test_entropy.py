"""lens_entropy by hand, then through mllm-refine's conformance kit on every tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from mllm_refine_entropy import LensEntropySelector, entropy

from mllm_refine.components import ModelInfo
from mllm_refine.testing.conformance import check_component

INFO = ModelInfo(num_layers=8, num_heads=4, num_kv_heads=4, hidden_size=8, vocab_size=4, family="test")


class LensView:
    """The part of StepView the selector reads: one (B, V) lens per layer."""

    def __init__(self, lens: dict[int, torch.Tensor]):
        self._lens = lens

    def lens(self, layer: int, final_norm: bool = True) -> torch.Tensor:
        return self._lens[layer]


def test_entropy_by_hand():
    assert entropy(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy(torch.tensor([0.0, float("-inf")])).item() == pytest.approx(0.0)


def test_default_candidates_and_needs():
    s = LensEntropySelector()
    s.setup(INFO)
    assert s.candidates() == [1, 2, 3, 4]
    assert s.needs().hidden == frozenset({1, 2, 3, 4})
    with pytest.raises(ValueError, match="layers: layer 9 is outside"):
        LensEntropySelector(layers=[9]).setup(INFO)


@pytest.mark.parametrize("pick, expected", [("lowest", [2, 3]), ("highest", [3, 2])])
def test_picks_by_entropy_per_sample(pick, expected):
    s = LensEntropySelector(layers=[2, 3], pick=pick)
    s.setup(INFO)
    flat, peaked = torch.zeros(4), torch.tensor([9.0, 0.0, 0.0, 0.0])
    # Sample 0 is sure at layer 2, sample 1 at layer 3.
    view = LensView({2: torch.stack([peaked, flat]), 3: torch.stack([flat, peaked])})
    assert s.select(view).tolist() == expected


def test_conforms_on_every_tiny_model():
    check_component(LensEntropySelector, {"pick": "lowest"})


def test_other_settings_conform():
    check_component(LensEntropySelector, {"pick": "highest", "final_norm": False}, models=["tiny-llava", "tiny-qwen2-vl"])
