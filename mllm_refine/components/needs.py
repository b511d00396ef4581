"""What a component asks the engine to capture. The engine captures nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mllm_refine.components.branch import Branch


@dataclass(frozen=True)
class Needs:
    """Capture requests, in layer numbers: layer ``l`` in 1..L is decoder block ``l``
    (whose output is the residual stream ``h_l``); layer 0 is the embedding output ``h_0``.

    attention: blocks whose attention row of the current query over the image tokens is kept,
        ``(B, H, I)`` per block and step (see ``StepView.attention``).
    hidden: layers whose residual stream at the current position is kept, ``(B, D)`` each, for
        the logit lens (``StepView.lens``).
    prefill_rows: blocks whose full prefill attention row of the last prompt token over every
        key is kept, ``(B, H, T)`` each, once per request (``StepView.prefill_row``).
    question_rows: ``(block, back)`` pairs whose full prefill attention row over every key is kept,
        ``(B, H, T)`` each, for the query ``back`` positions before each sample's last question
        token (``ModelAdapter.question_last``; ``back = 0`` is that token), once per request
        (``AttentionRow.question_rows``). The row is computed before any filter of its block acts.
    image_grid: each sample's image-token grids are located once per request from the prepared
        inputs (``ModelAdapter.image_grid``) and handed to head filters (``AttentionRow.image_grid``).
    scores: blocks whose pre-softmax scores of the current row over every key are kept, before
        any head filter acts, ``(B, H, K)`` per block and step (``StepView.scores``; diagnostics).
    """

    attention: frozenset[int] = field(default_factory=frozenset)
    hidden: frozenset[int] = field(default_factory=frozenset)
    prefill_rows: frozenset[int] = field(default_factory=frozenset)
    question_rows: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    image_grid: bool = False
    scores: frozenset[int] = field(default_factory=frozenset)
    # Extra inputs decoded in lockstep with the answer, each with its own KV cache
    # (``components.branch.Branch``; ``StepView.branch_logits(name)``).
    branches: frozenset[Branch] = field(default_factory=frozenset)

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(
            attention=self.attention | other.attention,
            hidden=self.hidden | other.hidden,
            prefill_rows=self.prefill_rows | other.prefill_rows,
            question_rows=self.question_rows | other.question_rows,
            image_grid=self.image_grid or other.image_grid,
            scores=self.scores | other.scores,
            branches=self.branches | other.branches,
        )

    @property
    def empty(self) -> bool:
        return not (
            self.attention or self.hidden or self.prefill_rows or self.question_rows
            or self.image_grid or self.scores or self.branches
        )
