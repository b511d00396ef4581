"""Test doubles that record what the engine shows the parts, for every family."""

from __future__ import annotations

from typing import Any

import torch

from mllm_refine.components import AttentionRow, HeadFilter, LogitCombiner, Needs


class Probe(LogitCombiner):
    """Declares attention, hidden and prefill rows; records each step's view; decodes vanilla."""

    name = "probe"
    uses_layer = False

    def __init__(self, attention: frozenset[int] = frozenset(), hidden: frozenset[int] = frozenset(),
                 prefill: frozenset[int] = frozenset()) -> None:  # fmt: skip
        self.declared = Needs(frozenset(attention), frozenset(hidden), frozenset(prefill))
        self.steps: list[dict[str, Any]] = []

    def needs(self) -> Needs:
        return self.declared

    def combine(self, view, layer: torch.Tensor | None) -> torch.Tensor:
        d = self.declared
        self.steps.append(
            {
                "logits": view.logits,  # (B, V)
                "captured": set(view.capture.attention),
                "raw": {l: view.attention(l, renormalize=False) for l in d.attention},  # l -> (B, H, I)
                "renormalised": {l: view.attention(l) for l in d.attention},
                "lens": {l: view.lens(l) for l in d.hidden},  # l -> (B, V)
                "lens_no_norm": {l: view.lens(l, final_norm=False) for l in d.hidden},
                "prefill": {l: view.prefill_row(l) for l in d.prefill_rows} if view.step == 0 else {},
                "image_mask": view.image_mask,  # (B, I)
            }
        )
        return view.logits


class RowSums(HeadFilter):
    """Identity filter that records, per call, the probed row's probability on valid and padded keys."""

    name = "row_sums"

    def __init__(self, layers: list[int]):
        self.layers = layers
        self.sums: list[torch.Tensor] = []  # (B, H) each: mass on valid keys
        self.padding: list[torch.Tensor] = []  # (B, H) each: mass on padded keys

    def active_layers(self) -> list[int]:
        return self.layers

    def probs(self, probs: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        valid = row.key_valid[:, None, :]  # (B, 1, K)
        self.sums.append((probs * valid).sum(-1))
        self.padding.append((probs * ~valid).sum(-1))
        return probs
