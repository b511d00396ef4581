"""The look loss of the Qwen2.5-VL embedded model's build (``--look-weight``): at some blocks, the
answer row's head-mean attention over the image is trained towards the cells of the object the
question asks about.

Trained on answers alone, the model's attention finds the scene's objects but not the one asked
about (docs/results.md, "Which block's attention points at the object"). A model trained with
this loss localises because it was taught to, and its maps must be reported as such; docs/embedded.md
("Teaching the answer row to look") has what it did in the phases tried so far.

The answer row is the last prompt position, the one that predicts the first answer token, as in
ViCrop's maps. Its attention comes from the same row function the decoder's probes use
(``engine.capture.prompt_row``), computed beside ``sdpa`` inside the ordinary forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Iterator, Sequence

from mllm_refine.engine.capture import prompt_row
from mllm_refine.lazy import nn, torch
from mllm_refine.metrics.localisation import cell_overlap

LOOK_ATTENTION = "mllm_refine_look"
_ROWS_ATTR = "_mllm_refine_look_rows"
_sdpa: Any = None


@dataclass
class AnswerRows:
    """What one forward records: ``rows[block]`` (B, H, K), the post-softmax attention of each
    sample's answer row at ``positions`` (B,), over keys allowed by ``key_valid`` (B, K)."""

    blocks: frozenset[int]  # 1-based, as the recipes number blocks
    positions: torch.Tensor
    key_valid: torch.Tensor
    rows: dict[int, torch.Tensor] = field(default_factory=dict)


def look_attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, T, Dh)
    key: torch.Tensor,  # (B, Hkv, T, Dh)
    value: torch.Tensor,  # (B, Hkv, T, Dh)
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``sdpa``; at a recorded block, also the answer rows (kept with their graph)."""
    out, weights = _sdpa(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    rec: AnswerRows | None = getattr(module, _ROWS_ATTR, None)
    block = int(getattr(module, "layer_idx", -1)) + 1
    if rec is not None and block in rec.blocks:
        rec.rows[block] = prompt_row(query, key, scaling, rec.key_valid, rec.positions)  # (B, H, T)
    return out, weights


@cache
def _register() -> None:
    global _sdpa
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    _sdpa = sdpa_attention_forward
    AttentionInterface.register(LOOK_ATTENTION, look_attention)
    AttentionMaskInterface.register(LOOK_ATTENTION, sdpa_mask)


@contextmanager
def recording(model: Any, blocks: Sequence[int], positions: torch.Tensor, attention_mask: torch.Tensor) -> Iterator[AnswerRows]:
    """While the block runs, the language model of ``model`` (a Qwen2.5-VL) records the answer
    rows at ``positions`` (B,) of ``blocks``; ``attention_mask`` (B, T) is the batch's padding
    mask. The model's attention implementation is restored after; no blocks: nothing changes."""
    rec = AnswerRows(frozenset(blocks), positions, attention_mask.bool())
    if not blocks:
        yield rec
        return
    _register()
    text = model.model.language_model
    config = text.config
    before = config._attn_implementation
    modules = [layer.self_attn for layer in text.layers]
    config._attn_implementation = LOOK_ATTENTION
    for m in modules:
        setattr(m, _ROWS_ATTR, rec)
    try:
        yield rec
    finally:
        config._attn_implementation = before
        for m in modules:
            delattr(m, _ROWS_ATTR)


def answer_positions(targets: torch.Tensor, length: int) -> torch.Tensor:
    """``(B,)``: the position predicting each row's first answer token, from ``make_batch``'s
    ``targets`` (B, KEEP), whose last ``n`` entries are the answer and EOS ending every row."""
    n = (targets != -100).sum(-1)  # (B,) answer tokens + EOS
    return length - 1 - n


def box_shares(boxes: Sequence[Sequence[float] | None], grid: int, image_size: tuple[int, int]) -> torch.Tensor:
    """``(B, G * G)`` float32, row-major cells: each cell's share of the target box's area over
    the image tokens' grid (rows sum to 1), all zero where a sample has no target."""
    out = torch.zeros(len(boxes), grid * grid)
    for b, box in enumerate(boxes):
        if box is None:
            continue
        share = cell_overlap((grid, grid), box, image_size).reshape(-1)  # (G * G,) area inside the box per cell
        out[b] = (share / share.sum()).float()
    return out


def look_loss(rows: dict[int, torch.Tensor], image: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``targets`` (B, I) against the head-mean answer-row attention over the
    image tokens, renormalised over them, averaged over samples with a target and over blocks.
    ``image`` (B, T) bool marks each row's I image tokens, in ``targets``' order."""
    has = targets.sum(-1) > 0  # (B,)
    if not rows or not bool(has.any()):
        return targets.new_zeros(())
    B, I = targets.shape
    losses = []
    for block in sorted(rows):
        a = rows[block].mean(1)  # (B, T) head mean
        a = a[image].view(B, I)  # (B, I): every row has the same image tokens' count
        p = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)  # (B, I)
        ce = -(targets * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)  # (B,)
        losses.append(ce[has].mean())
    return torch.stack(losses).mean()
