"""The shared math of mllm_refine.functional: its doctests, and the two plausibility cuts agreeing."""

from __future__ import annotations

import doctest

import torch

from mllm_refine import functional
from mllm_refine.functional import contrast, hellinger, plausible, relative_top


def test_doctests():
    result = doctest.testmod(functional)
    assert result.attempted >= 5 and result.failed == 0


def test_the_cut_in_probability_and_in_log_space_agree_off_the_edge():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 500, generator=g) * 3  # (B, V)
    for alpha in (0.0, 0.05, 0.1, 0.5, 1.0):
        a, b, c = plausible(z, alpha), relative_top(z.log_softmax(-1), alpha), relative_top(z, alpha)
        assert (a == b).float().mean() > 0.9999 and (b == c).float().mean() > 0.9999
        assert a.any(-1).all()  # the top token always stays
    assert plausible(z, 0.0).all() and relative_top(z, 0.0).all()


def test_hellinger_and_contrast_by_hand():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    want = ((0.5**0.5 - 1) ** 2 + 0.5) ** 0.5 / 2**0.5
    assert abs(hellinger(p, q).item() - want) < 1e-6 and hellinger(p, p).item() == 0
    final, early = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert contrast(final, early).tolist() == [[1.0, -1.0]]
    log_odds = contrast(final, early, "log_softmax")
    assert torch.allclose(log_odds, final.log_softmax(-1) - early.log_softmax(-1))
