"""Reductions over a probed row, two ways each: what VRGA's decode step and contrastive
attention's mask compute per probed block, with the operator each used before and the one it
uses now.

    python benchmarks/row_reductions.py --threads 1

Rows ``(B, H, K)`` of softmax probabilities over ``K`` keys, ``I`` of them image keys. Per batch
this prints the median time of each pair over ``--repeats`` calls, interleaved, their ratio, and
the largest difference of their results (0 where they are equal bit for bit):

- ``mass``: each head's probability on the image keys and on the boosted keys (weighted by
  gamma), one batched product with a ``(B, K, 2)`` key matrix against a multiply and a sum over
  the last axis for each;
- ``a log a``: ``sum a log a`` over the image keys, ``torch.special.entr`` then that product,
  against a log clamped at the smallest normal float, a multiply and a sum;
- ``rank``: each image slot's rank among the sample's slots, a second ``argsort`` of the first
  one's order against a scatter of ``arange`` through it (the inverse permutation);
- ``vrga step``: VRGA's whole decode step at one probed block (engaged heads, boost,
  renormalisation), written with those products against the shipped ``VRGAFilter.probs``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.row_layout import median_ms  # noqa: E402
from mllm_refine.components import AttentionRow, ModelInfo  # noqa: E402
from mllm_refine_plugins.vrga.filter import VRGAFilter  # noqa: E402
from mllm_refine_plugins.vrga.stats import TINY  # noqa: E402


def case(batch: int, heads: int, keys: int, image: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax rows ``(B, H, K)``, a float 0/1 image-key mask ``(B, 1, K)`` of ``image`` keys
    after a few text keys, and boost weights ``(B, 1, K)``: 0.5 on a tenth of the image keys."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(batch, heads, keys, generator=g), -1)  # (B, H, K)
    mask = torch.zeros(batch, 1, keys)
    mask[..., 5 : 5 + image] = 1.0
    weights = 0.5 * mask * (torch.rand(batch, 1, keys, generator=g) < 0.1)  # (B, 1, K)
    return probs, mask, weights


def pairs(probs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> dict[str, tuple]:
    """Name -> (before, now): two callables computing the same quantity."""
    cols = torch.stack([mask[:, 0], weights[:, 0]], -1)  # (B, K, 2): the key matrix of a product
    col = cols[..., :1]  # (B, K, 1): the image column
    values = probs.mean(1)  # (B, K): one value per key to rank
    ranks = torch.arange(values.shape[1]).expand_as(values)  # (B, K)

    def mass_product() -> torch.Tensor:
        return torch.bmm(probs, cols)  # (B, H, 2)

    def mass_sum() -> torch.Tensor:
        return torch.stack([(probs * mask).sum(-1), (probs * weights).sum(-1)], -1)  # (B, H, 2)

    def entr_product() -> torch.Tensor:
        return -torch.bmm(torch.special.entr(probs), col)[..., 0]  # (B, H)

    def log_sum() -> torch.Tensor:
        a = probs * mask  # (B, H, K)
        return a.clamp_min(TINY).log_().mul_(a).sum(-1)  # (B, H)

    def rank_sorts() -> torch.Tensor:
        return values.argsort(dim=1, stable=True).argsort(dim=1)  # (B, K)

    def rank_scatter() -> torch.Tensor:
        order = values.argsort(dim=1, stable=True)  # (B, K)
        return torch.empty_like(order).scatter_(1, order, ranks)  # (B, K)

    before_step, now_step = vrga_steps(probs, mask, weights)
    return {
        "mass": (mass_product, mass_sum),
        "a log a": (entr_product, log_sum),
        "rank": (rank_sorts, rank_scatter),
        "vrga step": (before_step, now_step),
    }


def vrga_steps(probs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> tuple:
    """VRGA's decode step at one probed block, with the key-matrix products and ``entr``, and as
    the filter computes it; both at the filter's defaults, on the boosted keys ``weights > 0``."""
    B, H, K = probs.shape
    f = VRGAFilter(gamma=0.5)
    f.setup(ModelInfo(num_layers=4, num_heads=H, num_kv_heads=H, hidden_size=8, vocab_size=8, family="bench"))
    row = AttentionRow(layer=2, step=1, key_valid=torch.ones(B, K, dtype=torch.bool), image_keys=mask[:, 0] > 0)
    row.state[f.state_key] = weights[:, 0] > 0  # (B, K): the prefill analysis's boosted keys
    cols = torch.stack([mask[:, 0], f.gamma * (weights[:, 0] > 0).float()], -1)  # (B, K, 2)
    share = K / mask.sum(-1)  # (B, 1): n_valid / n_image
    one = torch.ones(())

    def before() -> torch.Tensor:
        sums = torch.bmm(probs, cols)  # (B, H, 2)
        h = torch.bmm(torch.special.entr(probs), cols[..., :1])[..., 0]  # (B, H)
        engaged = sums[..., 0] * share > (h * f.engaged_h).clamp_min_(f.engaged_r)  # (B, H)
        e = engaged.unsqueeze(-1).to(probs.dtype)  # (B, H, 1)
        return torch.addcmul(probs, probs, e * cols[:, None, :, 1]) / torch.addcmul(one, e, sums[..., 1:])

    def now() -> torch.Tensor:
        return f.probs(probs, row)

    return before, now


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--heads", type=int, default=8, help="default 8: the scaled shape")
    ap.add_argument("--keys", type=int, default=612, help="keys of a decode step's row")
    ap.add_argument("--image", type=int, default=576, help="image keys among them")
    ap.add_argument("--batch", type=int, action="append", help="repeatable (default 1 and 16)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; {args.heads} heads, {args.keys} keys of which {args.image} image keys")
    print("| quantity | batch | before ms | now ms | before / now | largest difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in args.batch or [1, 16]:
        for name, (before, now) in pairs(*case(batch, args.heads, args.keys, args.image)).items():
            t = median_ms({"before": before, "now": now}, args.repeats)
            diff = (before().double() - now().double()).abs().max().item()
            print(f"| {name} | {batch} | {t['before']:.4f} | {t['now']:.4f} | {t['before'] / t['now']:.2f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
