"""The math decoding parts share, one copy each: plugins import it rather than each other.

Every function works on the last dimension and broadcasts over the leading ones; shapes below are
the usual ``(B, V)`` logits of one step or ``(..., I)`` attention over image tokens.
"""

from __future__ import annotations

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
    return probs >= alpha * probs.max(dim=-1, keepdim=True).values


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
    return (p.clamp_min(0).sqrt() - q.clamp_min(0).sqrt()).norm(dim=-1) / math.sqrt(2)


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


__all__ = ["contrast", "hellinger", "plausible", "relative_top"]
