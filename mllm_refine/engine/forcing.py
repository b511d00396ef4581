"""Teacher forcing: score given continuations under the refined logits of each step.

At step t every row is made to take its own continuation's token t, after the parts have refined
the step's logits, so each later step sees the same context the continuation would give it. The
log-probability of that token under the refined distribution is summed per row (lm-eval's
``loglikelihood``: the sum over the continuation's tokens, and whether greedy decoding would have
produced all of them).
"""

from __future__ import annotations

import torch


class TeacherForcing:
    """Per row, a non-empty continuation of token ids; ``fill`` pads the shorter ones."""

    def __init__(self, continuations: list[list[int]], fill: int, device: torch.device) -> None:
        N = max(len(c) for c in continuations)
        self.length = torch.tensor([len(c) for c in continuations], device=device)  # (B,)
        self.targets = torch.tensor([c + [fill] * (N - len(c)) for c in continuations], device=device)  # (B, N)
        self.logprob = torch.zeros(len(continuations), dtype=torch.float64, device=device)  # (B,)
        self.greedy = torch.ones(len(continuations), dtype=torch.bool, device=device)  # (B,)

    def __call__(self, step: int, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, V): the step's refined logits. Returns logits that keep only each row's
        forced token (rows past their continuation take ``fill``, which ends them)."""
        target = self.targets[:, step]  # (B,)
        live = step < self.length  # (B,)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, None])[:, 0]  # (B,)
        self.logprob += torch.where(live, logp.double(), 0.0)
        self.greedy &= ~live | (logits.argmax(-1) == target)
        return torch.full_like(logits, float("-inf")).scatter_(1, target[:, None], 0.0)

    def results(self) -> list[tuple[float, bool]]:
        return list(zip(self.logprob.tolist(), self.greedy.tolist()))


__all__ = ["TeacherForcing"]
