"""The math decoding parts share, one copy each: plugins import it rather than each other.

Every function works on the last dimension and broadcasts over the leading ones; shapes below are
the usual ``(B, V)`` logits of one step or ``(..., I)`` attention over image tokens.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

from mllm_refine.lazy import torch


def plausible(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(B, V)`` bool: the tokens whose probability is at least ``alpha`` times the row's largest
    (the cut compared in probability space); ``alpha = 0`` keeps every token.

    >>> plausible(torch.tensor([[2.0, 1.0, -3.0]]), 0.2).tolist()
    [[True, True, False]]
    """
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return probs >= alpha * probs.amax(dim=-1, keepdim=True)


def relative_top(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(B, V)`` bool: ``scores >= max scores + log(alpha)``, the same cut as ``plausible`` but
    compared in log space, as Hugging Face's DoLa, VCD's and PAI's code do; ``scores`` are
    log-probabilities or logits (a shift per row does not move the cut); ``alpha = 0`` keeps all.

    >>> relative_top(torch.tensor([[0.0, -1.0, -3.0]]).log_softmax(-1), 0.2).tolist()
    [[True, True, False]]
    """
    threshold = scores.max(-1, keepdim=True).values + (math.log(alpha) if alpha > 0 else -math.inf)  # (B, 1)
    return scores >= threshold


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``||sqrt(p) - sqrt(q)||_2 / sqrt(2)`` over the last dim: 0 for equal distributions, 1 for
    disjoint ones; ``(...)`` from ``(..., I)`` each (DualPD's attention shift).

    >>> hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item()
    1.0
    """
    d: torch.Tensor = (p.clamp_min(0).sqrt() - q.clamp_min(0).sqrt()).norm(dim=-1)  # (...)
    return d / math.sqrt(2)


def contrast(
    final: torch.Tensor, early: torch.Tensor, space: Literal["logits", "log_softmax"] = "logits"
) -> torch.Tensor:
    """``(B, V)``: ``final - early`` as raw logits, or as log-probabilities (``log_softmax``).

    >>> contrast(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).tolist()
    [[1.0, 2.0]]
    >>> contrast(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 4.0]]), "log_softmax").abs().max().item() < 1e-6
    True
    """
    if space == "log_softmax":
        return final.log_softmax(-1) - early.log_softmax(-1)
    if space == "logits":
        return final - early
    raise ValueError(f"space: {space!r} is not 'logits' or 'log_softmax'")


def head_mean_map(attn: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``(B, I)``: the head mean of per-head image maps ``attn`` ``(B, H, I)``, each head first
    renormalised over the sample's image tokens (``slots`` ``(B, I)`` bool), so every row sums to 1.

    >>> head_mean_map(torch.tensor([[[1.0, 1.0, 9.0], [3.0, 1.0, 9.0]]]), torch.tensor([[True, True, False]])).tolist()
    [[0.625, 0.375, 0.0]]
    """
    a = attn * slots[:, None, :]  # (B, H, I) padding slots hold nothing
    a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return a.mean(dim=1)


def contrastive_map(abar: dict[int, torch.Tensor], fusion: list[int], final: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I_A (B, I), i* (B,))`` from head-mean image maps ``abar[l]`` ``(B, I)``: ``i*`` is the
    block of ``fusion`` farthest (Hellinger) from block ``final``, and ``I_A = Abar_final - Abar_{i*}``
    (contrastive attention, arXiv 2601.08151).

    >>> m, i = contrastive_map({1: torch.tensor([[0.5, 0.5]]), 2: torch.tensor([[0.9, 0.1]]),
    ...                         3: torch.tensor([[0.2, 0.8]])}, [1, 2], 3)
    >>> i.tolist(), [round(v, 2) for v in m[0].tolist()]
    ([2], [-0.7, 0.7])
    """
    ref = abar[final]  # (B, I)
    cand = torch.stack([abar[i] for i in fusion], dim=1)  # (B, S, I)
    dist = hellinger(cand, ref[:, None, :])  # (B, S)
    pick = dist.argmax(dim=1)  # (B,)
    i_star = torch.tensor(fusion, device=ref.device)[pick]  # (B,)
    early = cand[torch.arange(ref.shape[0], device=ref.device), pick]  # (B, I)
    return ref - early, i_star


# Contrastive attention's blocks (arXiv 2601.08151), shared by its masking and crop readings:
# LLaVA-1.5-7B's fusion set S and review block k (1-based, of 32), and the families the paper
# reports a late review for (the others review at their last block).
CONTRASTIVE_DEPTH = 32
CONTRASTIVE_FUSION = (2, 4, 8, 11, 12, 13)
CONTRASTIVE_REVIEW = 29
CONTRASTIVE_REVIEW_FAMILIES = ("llava", "llava_next")


def scale_blocks(blocks: tuple[int, ...] | list[int], num_layers: int, depth: int) -> list[int]:
    """A paper's blocks (1-based, of a ``depth``-block model) mapped to ``num_layers`` blocks,
    sorted, without repeats, each within ``1..num_layers``.

    >>> scale_blocks((2, 4, 8, 11, 12, 13), 30, 32)
    [2, 4, 8, 10, 11, 12]
    """
    return sorted({min(num_layers, max(1, round(b * num_layers / depth))) for b in blocks})


def positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index (B, I), slots (B, I))`` from a ``(B, T)`` bool mask: each row's True positions in
    order, padded to the longest row's count ``I``; ``slots`` marks the real ones (e.g. a batch's
    image tokens: ``index`` gathers a sample's image keys out of a ``(B, H, T)`` row).

    >>> index, slots = positions(torch.tensor([[False, True, True], [True, False, False]]))
    >>> index.tolist(), slots.tolist()
    ([[1, 2], [0, 1]], [[True, True], [True, False]])
    """
    counts = mask.sum(1)  # (B,)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, T) True positions first, in order
    slots = torch.arange(width, device=mask.device)[None] < counts[:, None]  # (B, I)
    return order[:, :width], slots


def sample_seed(seed: int, sample_id: str, stream: str = "") -> int:
    """A 63-bit seed from the recipe seed, the sample id and the name of what draws from it
    (``stream``; "" is the sampler's), so a sample's draws never depend on its batch and two uses
    of one sample never share a stream.

    >>> sample_seed(0, "q1") == sample_seed(0, "q1") != sample_seed(0, "q1", "noise")
    True
    """
    key = "\0".join([str(seed), sample_id, *([stream] if stream else [])])
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_generators(seed: int, ids: list[str], device: torch.device | str = "cpu", stream: str = "") -> list[torch.Generator]:
    """One seeded generator per sample id, on ``device`` (see ``sample_seed``).

    >>> a, b = sample_generators(0, ["q1", "q1"])
    >>> torch.rand(2, generator=a).tolist() == torch.rand(2, generator=b).tolist()
    True
    """
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, i, stream)) for i in ids]


__all__ = [
    "CONTRASTIVE_DEPTH",
    "CONTRASTIVE_FUSION",
    "CONTRASTIVE_REVIEW",
    "CONTRASTIVE_REVIEW_FAMILIES",
    "contrast",
    "contrastive_map",
    "head_mean_map",
    "hellinger",
    "plausible",
    "positions",
    "relative_top",
    "sample_generators",
    "sample_seed",
    "scale_blocks",
]
