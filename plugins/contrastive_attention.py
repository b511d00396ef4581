"""Contrastive attention, "Where Does Vision Meet Language?" (arXiv 2601.08151).

Vision and text fuse at a few shallow blocks (the fusion set ``S``); some models look at the
image again late (the review block ``k``). Attention noise on irrelevant regions persists
across blocks, so the difference of two head-mean image maps cancels it:

    i* = argmax_{i in S} Hellinger(Abar_i, Abar_k)        the fusion block that moved most
    I_A = Abar_k - Abar_{i*}                              the contrastive map, (B, I)

``contrastive_map`` is that computation, shared with the crop reading (ViCrop-style refiners).
``contrastive_attention`` (HeadFilter) is the masking reading: at block ``k`` of the very
pass that produces the logits, the image keys with the lowest ``I_A`` get their probabilities
multiplied by ``weight`` (0 masks them) in every head, and the rows are renormalised.

Readings where the paper is silent (parameters):
- which keys are "low": the lowest ``round(ratio * n)`` of a sample's ``n`` image tokens
  (``ratio`` 0.5: the half whose attention did not grow from the fusion block);
- ``weight``: 0 masks, a value in (0, 1) down-weights instead;
- defaults of ``S`` and ``k``: LLaVA-1.5's blocks (2, 4, 8, 11, 12, 13 and 29 of 32) scaled to
  the model's depth; families without a reported review (Qwen-VL) use the last block as ``k``,
  and the LLaVA fusion set scaled, as the paper lists no other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mllm_refine.components import AttentionRow, HeadFilter, ModelInfo, Needs, first_grid_maps, resolve_layers
from mllm_refine.functional import hellinger
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch

LLAVA_DEPTH = 32
LLAVA_FUSION = (2, 4, 8, 11, 12, 13)  # fusion blocks of LLaVA-1.5-7B (1-based, of 32)
LLAVA_REVIEW = 29
REVIEW_FAMILIES = ("llava", "llava_next")  # families the paper reports a late review for


def contrastive_map(abar: dict[int, torch.Tensor], fusion: list[int], final: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I_A (B, I), i* (B,))`` from head-mean image maps ``abar[l]`` (B, I), each a distribution
    over the sample's image tokens: ``i*`` is the block of ``fusion`` farthest (Hellinger) from
    block ``final``, and ``I_A = Abar_final - Abar_{i*}``."""
    ref = abar[final]  # (B, I)
    cand = torch.stack([abar[i] for i in fusion], dim=1)  # (B, S, I)
    dist = hellinger(cand, ref[:, None, :])  # (B, S)
    pick = dist.argmax(dim=1)  # (B,)
    i_star = torch.tensor(fusion, device=ref.device)[pick]  # (B,)
    early = cand[torch.arange(ref.shape[0], device=ref.device), pick]  # (B, I)
    return ref - early, i_star


def head_mean_map(attn: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``(B, I)``: head-mean of the per-head image maps ``attn`` (B, H, I), each renormalised
    over the sample's image tokens (``slots`` (B, I))."""
    a = attn * slots[:, None, :]
    a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return a.mean(dim=1)


def lowest(values: torch.Tensor, slots: torch.Tensor, ratio: float) -> torch.Tensor:
    """``(B, I)`` bool: the ``round(ratio * n_b)`` real slots of each sample with the lowest values."""
    count = torch.round(ratio * slots.sum(dim=1))  # (B,)
    score = values.masked_fill(~slots, float("inf"))  # padding slots rank last
    rank = score.argsort(dim=1, stable=True).argsort(dim=1)  # (B, I): 0 = lowest
    return (rank < count[:, None]) & slots


def scaled(blocks: tuple[int, ...], num_layers: int) -> list[int]:
    """Blocks of a 32-block LLaVA-1.5 mapped to a model of ``num_layers`` blocks."""
    return sorted({min(num_layers, max(1, round(b * num_layers / LLAVA_DEPTH))) for b in blocks})


@dataclass
class ContrastiveAttentionMask(HeadFilter):
    """Contrastive attention: mask image keys with low ``Abar_k - Abar_{i*}`` at the review block."""

    name = "contrastive_attention"
    noop_params = {"weight": 1.0}
    fusion: list[int] | None = None  # fusion blocks S; None: LLaVA-1.5's, scaled to depth
    review: int | None = None  # review block k; None: 29 of 32 scaled (LLaVA families), else L
    ratio: float = 0.5  # share of each sample's image tokens treated as low
    weight: float = 0.0  # multiplier of their probabilities; 0 masks them

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio: {self.ratio} is outside 0..1")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight: {self.weight} is outside 0..1")
        if self.review is not None:
            self.k = resolve_layers([self.review], L, "review", lowest=2)[0]
        else:
            self.k = scaled((LLAVA_REVIEW,), L)[0] if info.family in REVIEW_FAMILIES else L
        if self.fusion is not None:
            self.S = resolve_layers(self.fusion, L, "fusion")
        else:
            self.S = [b for b in scaled(LLAVA_FUSION, L) if b < self.k]
        if not self.S or max(self.S) >= self.k:
            raise ValueError(f"fusion: blocks {self.S} must be non-empty and before the review block {self.k}")
        self._i_star: torch.Tensor | None = None
        self._map: list | None = None

    def active_layers(self) -> list[int]:
        noop = self.ratio == 0.0 or self.weight == 1.0
        return [] if noop else [self.k]

    def needs(self) -> Needs:
        return Needs(attention=frozenset(self.S), image_grid=True)  # the grid: the reported map

    def conflicts(self, parts: Any) -> str | None:
        if sum(p.name == self.name for p in parts.components()) > 1:
            return "listed twice: the second would contrast maps the first already masked"
        return None

    def probs(self, probs: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        index, slots = row.image_index, row.image_slots  # (B, I) each
        B, H, K = probs.shape
        if index is None or slots is None or index.shape[1] == 0:
            return probs
        own = probs.gather(2, index[:, None, :].expand(B, H, -1))  # (B, H, I): block k, this step
        abar = {i: head_mean_map(row.attention[i], slots) for i in self.S}
        abar[self.k] = head_mean_map(own, slots)
        contrast, i_star = contrastive_map(abar, self.S, self.k)  # (B, I), (B,)
        if row.step == 0:
            self._i_star = i_star.cpu()
            self._map = first_grid_maps(contrast, row.image_grid, row.row_end_tokens) if row.image_grid else None
        low = lowest(contrast, slots, self.ratio)  # (B, I)
        factor = torch.ones(B, K, dtype=probs.dtype, device=probs.device)
        factor.scatter_(1, index, torch.where(low, self.weight, 1.0).to(probs.dtype))  # (B, K)
        p = probs * factor[:, None, :]  # (B, H, K)
        total = p.sum(-1, keepdim=True)  # (B, H, 1)
        return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), probs)

    def report(self) -> dict[str, Any]:
        """Per sample, at the first answer token: the fusion block ``i*`` and ``I_A`` on the
        image grid (``map``)."""
        if self._i_star is None:
            return {}
        out = {"i_star": self._i_star.tolist()}
        if self._map is not None:
            out["map"] = self._map
        self._i_star = self._map = None
        return out


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(ContrastiveAttentionMask)
