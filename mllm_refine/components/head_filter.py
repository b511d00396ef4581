"""HeadFilter: acts inside attention of the forward pass that produces the step's logits."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mllm_refine.components.base import Component
from mllm_refine.lazy import torch


@dataclass
class AttentionRow:
    """Where a filter is called: the current query row of one block.

    The row is the last position of the batch: the last prompt token at prefill, the newest
    token at each later step. Filters see every head of that row over every key.
    """

    layer: int  # block number, 1..L
    step: int  # 0 at prefill (it yields the first new token), then 1, 2, ...
    key_valid: torch.Tensor  # (B, K) bool: keys the row may attend to (padding excluded)
    image_keys: torch.Tensor  # (B, K) bool: keys that are image tokens of each sample
    state: dict[str, Any] = field(default_factory=dict)  # per-request scratch shared by all parts
    # Each sample's image tokens in prompt order: key position of the i-th one, and which of the
    # I slots hold one (samples with fewer image tokens are padded).
    image_index: torch.Tensor | None = None  # (B, I) long
    image_slots: torch.Tensor | None = None  # (B, I) bool
    # Needs.image_grid: per sample, the (rows, cols) grids its image tokens run through, and the
    # extra tokens after each grid row (cycling over grids), as in ``ModelAdapter.image_grid``.
    image_grid: list[list[tuple[int, int]]] | None = None
    row_end_tokens: tuple[int, ...] = (0,)
    # What this request captured so far: Needs.attention of the blocks before this one in the
    # same forward pass, (B, H, I) raw probabilities each; Needs.prefill_rows, (B, H, T) each.
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    prefill_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    # Needs.question_rows: (block, back) -> (B, H, T) rows of the prefill, and (B,) the position of
    # each sample's last question token in the prompt (None when no part asked for them).
    question_rows: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    question_last: torch.Tensor | None = None
    # False when the row sees every key (no padding in the batch): ``key_valid`` is all True and
    # a filter may skip masking with it.
    padded: bool = True


class HeadFilter(Component):
    """Rescales or reweights heads of the current attention row, per sample.

    ``scores`` edits pre-softmax scores ``(B, H, K)`` (keys outside ``key_valid`` are masked
    afterwards by the engine); ``probs`` edits post-softmax probabilities ``(B, H, K)`` and must
    return rows that sum to 1 over valid keys. The default of each is the identity.
    """

    kind: ClassVar[str] = "head_filter"

    @abstractmethod
    def active_layers(self) -> list[int]:
        """Blocks this filter acts in (valid after ``setup``); empty when its settings are a no-op."""

    def scores(self, scores: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        return scores

    def probs(self, probs: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        return probs
