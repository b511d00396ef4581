"""HeadFilter: acts inside attention of the forward pass that produces the step's logits."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mllm_refine.components.base import Component


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
