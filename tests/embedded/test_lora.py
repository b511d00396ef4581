"""LoRA factors as trained (wrapped linears) and as shipped (merged into the base weights) agree."""

from __future__ import annotations

import torch
from torch import nn

from mllm_refine.embedded import lora


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(6, 4, bias=False)
        self.v_proj = nn.Linear(6, 4, bias=False)
        self.o_proj = nn.Linear(4, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.q_proj(x) * self.v_proj(x))


def test_shipped_factors_merge_into_the_same_function():
    torch.manual_seed(0)
    trained, plain = nn.Sequential(Block(), Block()), nn.Sequential(Block(), Block())
    plain.load_state_dict(trained.state_dict())
    params = lora.add_lora(trained, ("q_proj", "v_proj"), rank=2, alpha=4.0, seed=0)
    assert len(params) == 2 * 2 * 2  # (A, B) x (q, v) x 2 blocks
    with torch.no_grad():
        for p in params:
            p.normal_()  # as if trained: B is no longer zero
    x = torch.randn(3, 6)
    expected = trained(x)
    state = lora.lora_state_dict(trained, ("q_proj", "v_proj"))
    assert lora.merge_lora(plain, state) == 4
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    lora.unwrap_lora(trained, ("q_proj", "v_proj"))
    assert isinstance(trained[0].q_proj, nn.Linear)
    torch.testing.assert_close(trained(x), expected, rtol=1e-5, atol=1e-5)


def test_merge_refuses_factors_for_missing_layers():
    state = {"nowhere.lora_A": torch.zeros(2, 6), "nowhere.lora_B": torch.zeros(4, 2)}
    try:
        lora.merge_lora(nn.Sequential(Block()), state)
    except KeyError as e:
        assert "nowhere" in str(e)
    else:
        raise AssertionError("merge_lora accepted factors for a layer the model lacks")


def test_saved_factors_load_back_into_fresh_adapters():
    torch.manual_seed(0)
    trained, fresh = nn.Sequential(Block()), nn.Sequential(Block())
    fresh.load_state_dict(trained.state_dict())
    for p in lora.add_lora(trained, ("q_proj", "v_proj"), rank=2, alpha=4.0, seed=0):
        with torch.no_grad():
            p.normal_()
    lora.add_lora(fresh, ("q_proj", "v_proj"), rank=2, alpha=4.0, seed=1)
    x = torch.randn(3, 6)
    assert not torch.allclose(fresh(x), trained(x))
    assert lora.load_lora(fresh, lora.lora_state_dict(trained, ("q_proj", "v_proj")), ("q_proj", "v_proj")) == 2
    torch.testing.assert_close(fresh(x), trained(x), rtol=1e-5, atol=1e-5)
