"""VRGA's per-head statistics: how much a head looks at the image (R), how spread that look is
(H), and the head sets they select, at prefill and at each later step."""

from __future__ import annotations

from mllm_refine.lazy import torch

TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny: the smallest normal float32


def row_stats(probs: torch.Tensor, image_keys: torch.Tensor, key_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, H)``, each ``(B, H)``, of attention rows ``probs`` (B, H, K): the image's mean
    probability over the mean of all valid keys, and the entropy (nats) of the image part
    renormalised to sum 1."""
    cols = torch.stack([image_keys, key_valid], dim=-1).to(probs.dtype)  # (B, K, 2) 0/1 columns
    sums = torch.bmm(probs, cols)  # (B, H, 2): attention on image keys, on valid keys
    counts = cols.sum(1).clamp_min(1)  # (B, 2)
    mass = sums[..., 0]  # (B, H)
    ratio = (mass / counts[:, None, 0]) / (sums[..., 1] / counts[:, None, 1]).clamp_min(TINY)
    # Entropy of p = a / m over the image: -sum p log p = log m - (sum a log a) / m.
    a_log_a = torch.bmm(torch.special.xlogy(probs, probs), cols[..., :1])[..., 0]  # (B, H)
    m = mass.clamp_min(TINY)
    entropy = torch.where(mass > 0, m.log() - a_log_a / m, 0.0)
    return ratio, entropy


def engaged_heads(
    probs: torch.Tensor,
    image: torch.Tensor,
    share: torch.Tensor,
    engaged_r: float,
    engaged_h: float,
    entropy: str = "raw",
) -> torch.Tensor:
    """``(B, H)`` bool: the heads of attention rows ``probs`` (B, H, K) with ``R > engaged_r``
    and ``R > engaged_h * H``; ``image`` (B, 1, K) is 1.0 on the image keys and 0.0 elsewhere. A
    row sums to 1 over its valid keys, so their mean is ``1 / n_valid`` and ``R = mass * share``
    with ``share = n_valid / n_image`` (B, 1). ``entropy``: ``raw``, ``-sum a log a`` over the
    image probabilities as they are (summing to the image mass, not to 1); ``renorm``, the
    entropy of the image part renormalised, as ``row_stats``. Reductions over the last axis, not
    products with key columns: on a CPU a batched product with a ``(B, K, 2)`` key matrix is 2.6x
    slower than two multiply-and-sums at batch 16 (``benchmarks/row_reductions.py``)."""
    a = probs * image  # (B, H, K): image probabilities, 0 on every other key
    mass = a.sum(-1)  # (B, H)
    # sum a log a with log clamped at the smallest normal float: 0 where a = 0, and one
    # vectorised log (torch.special.entr's CPU kernel is scalar, 2.7x slower at batch 16).
    a_log_a = a.clamp_min(TINY).log_().mul_(a).sum(-1)  # (B, H), <= 0
    if entropy == "raw":
        bound = a_log_a.mul_(-engaged_h)  # (B, H): engaged_h * H
    else:
        m = mass.clamp_min(TINY)
        bound = (m.log() - a_log_a / m).mul_(engaged_h)  # (B, H): engaged_h * H of a / m
    # R > engaged_r and R > engaged_h * H, as one comparison with the larger bound.
    return mass * share > bound.clamp_min_(engaged_r)


def select_heads(
    ratio: torch.Tensor, efr: torch.Tensor, pool: torch.Tensor, visual_q: float, ratio_q: float, background_r: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visual, background)`` bool ``(B, N)`` over the N = L * H (block, head) pairs of each
    sample, from ``ratio`` and ``efr`` (B, N); ``pool`` (N,) marks the pairs that may be
    background heads."""
    low_efr = efr <= torch.quantile(efr, visual_q, dim=1, keepdim=True)
    high_r = ratio >= torch.quantile(ratio, ratio_q, dim=1, keepdim=True)
    visual = low_efr & high_r
    visual = torch.where(visual.any(dim=1, keepdim=True), visual, high_r)  # fallback: R alone
    background = (ratio < background_r) & pool[None, :]
    return visual, background


def background_pool(layers: list[int], heads: int, share: float | None, early: list[int]) -> torch.Tensor:
    """``(N,)`` bool over the (block, head) pairs of ``layers`` (block-major, heads in order):
    with ``share``, the first ``round(share * N)`` pairs; without, every head of the ``early``
    blocks."""
    N = len(layers) * heads
    if share is not None:
        return torch.arange(N) < round(share * N)
    return torch.tensor([l in early for l in layers]).repeat_interleave(heads)
