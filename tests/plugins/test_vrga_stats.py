"""VRGA's per-head statistics by hand (``plugins/vrga/stats.py``): R and the entropy at prefill
and at each decode step, and the head sets they select."""

from __future__ import annotations

import math

import torch

from mllm_refine_plugins.vrga import BACKGROUND_SHARE, background_pool, engaged_heads, row_stats, select_heads
from mllm_refine_plugins.vrga.stats import TINY


def test_row_stats_by_hand():
    probs = torch.tensor([[[0.1, 0.6, 0.2, 0.1], [0.0, 0.5, 0.5, 0.0]]])  # (B=1, H=2, K=4)
    image = torch.tensor([[False, True, True, False]])
    valid = torch.tensor([[False, True, True, True]])  # key 0 is padding
    ratio, entropy = row_stats(probs, image, valid)
    # Head 0: image mean 0.8 / 2 = 0.4 over the mean of 3 valid keys (0.9 / 3 = 0.3) -> 4/3.
    # Head 1: 1.0 / 2 over 1.0 / 3 -> 1.5; image parts [0.75, 0.25] and [0.5, 0.5].
    torch.testing.assert_close(ratio, torch.tensor([[0.4 / 0.3, 1.5]]))
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(entropy, torch.tensor([[h0, math.log(2)]]))


def test_engaged_entropy_raw_and_renormalised_by_hand():
    # Image probabilities [0.5, 0.3] (mass 0.8): raw H = -(0.5 ln 0.5 + 0.3 ln 0.3) = 0.7078;
    # renormalised H = ln 0.8 + 0.7078 / 0.8 = 0.6616. R = 0.8 * share = 0.68 lies between.
    probs = torch.tensor([[[0.5, 0.3, 0.2]]])  # (B=1, H=1, K=3)
    image = torch.tensor([[[1.0, 1.0, 0.0]]])  # (B, 1, K)
    share = torch.tensor([[0.85]])
    raw = engaged_heads(probs, image, share, engaged_r=0.0, engaged_h=1.0, entropy="raw")
    renorm = engaged_heads(probs, image, share, engaged_r=0.0, engaged_h=1.0, entropy="renorm")
    assert raw.tolist() == [[False]] and renorm.tolist() == [[True]]
    # Either bound moves the decision: raw H 0.7078 is passed by R 0.68 once engaged_h < 0.96,
    # and engaged_r above R blocks the head whatever its entropy.
    assert engaged_heads(probs, image, share, engaged_r=0.0, engaged_h=0.95, entropy="raw").tolist() == [[True]]
    assert engaged_heads(probs, image, share, engaged_r=0.69, engaged_h=0.0, entropy="raw").tolist() == [[False]]


def test_engaged_heads_entropy_matches_entr_with_zero_image_probabilities():
    # A zero probability on an image key adds nothing (0 log 0 = 0), as in torch.special.entr.
    probs = torch.tensor([[[0.0, 0.6, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]]])  # (B=1, H=2, K=4)
    image = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    h = torch.special.entr(probs[..., :3]).sum(-1)  # (1, 2): raw entropies
    share = torch.tensor([[1.0]])
    for head in range(2):
        r = probs[0, head, :3].sum().item()  # R = mass at share 1
        tie = r / h[0, head].item()  # the engaged_h at which engaged_h * H equals R
        assert not engaged_heads(probs, image, share, 0.0, tie * (1 + 1e-4), "raw")[0, head]
        assert engaged_heads(probs, image, share, 0.0, tie * (1 - 1e-4), "raw")[0, head]


def test_select_heads_and_background_pool_by_hand():
    ratio = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.005, 2.0, 3.0, 4.0, 5.0]])  # (B=2, N=5)
    efr = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    pool = torch.tensor([True, True, False, False, False])
    visual, background = select_heads(ratio, efr, pool, visual_q=0.25, ratio_q=0.75, background_r=0.01)
    # Quantiles (linear, 5 values): 0.25 -> the 2nd smallest, 0.75 -> the 4th.
    # Sample 0: EFR <= 2 at heads 1, 3; R >= 4 at heads 3, 4 -> head 3.
    # Sample 1: EFR <= 2 at heads 0, 1; R >= 4 at heads 3, 4 -> none: fall back to R alone.
    assert visual.tolist() == [[False, False, False, True, False], [False, False, False, True, True]]
    assert background.tolist() == [[False] * 5, [True, False, False, False, False]]
    # The code's 63 first pairs on Qwen2.5-VL-7B's 28 x 28, and the share on other shapes.
    assert background_pool(list(range(1, 29)), 28, BACKGROUND_SHARE, []).nonzero().flatten().tolist() == list(range(63))
    assert background_pool([1, 2, 3, 4], 4, 0.25, []).tolist() == [True] * 4 + [False] * 12
    assert background_pool([1, 2, 3], 2, None, [2]).tolist() == [False, False, True, True, False, False]


def test_engaged_heads_agree_with_row_stats_on_padded_rows():
    torch.manual_seed(0)
    B, Hd, K = 3, 6, 40
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[1, :7], valid[2, :15] = False, False  # left padding
    image = torch.zeros(B, K, dtype=torch.bool)
    image[:, 18:34] = True
    scores = torch.randn(B, Hd, K) * 3
    scores[:, 0, 18:34] += 6  # a head that looks at the image
    scores[:, 1, 18:34] = float("-inf")  # a head with no image mass
    probs = torch.softmax(scores.masked_fill(~valid[:, None], float("-inf")), -1)
    ratio, entropy = row_stats(probs, image, valid)
    expected = (ratio > 0.6) & (ratio > 0.2 * entropy)
    share = valid.sum(1, keepdim=True).float() / image.sum(1, keepdim=True).float()
    got = engaged_heads(probs, image.float()[:, None, :], share, 0.6, 0.2, entropy="renorm")
    assert got.tolist() == expected.tolist()
    assert got[:, 0].all() and not got[:, 1].any()


def test_tiny_is_float32s_smallest_normal():
    assert TINY == torch.finfo(torch.float32).tiny
