"""Metrics as sums of per-sample statistics.

Every metric here keeps one summed state vector, so ``torchmetrics`` reduces it across ranks with
a sum, and ``compare`` can bootstrap it cheaply: resampling ids only reweights the rows of
``sample_stats`` before the same ``reduce``.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class StatsMetric(Metric):
    """Subclasses set ``stats`` (names of the summed columns) and ``primary`` (the headline
    value) and implement ``sample_stats`` and ``reduce``."""

    sums: torch.Tensor  # (len(stats),) float64, a torchmetrics state summed across ranks

    full_state_update = False
    stats: tuple[str, ...] = ("score", "count")
    primary: str = "score"

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", default=torch.zeros(len(self.stats), dtype=torch.float64), dist_reduce_fx="sum")

    def sample_stats(self, predictions: list[str], references: list[list[str]]) -> torch.Tensor:
        """``(N, len(stats))`` float64: each sample's contribution to the sums."""
        raise NotImplementedError

    def reduce(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values from summed stats ``(..., len(stats))``; each value has shape ``(...)``."""
        return {self.primary: sums[..., 0] / sums[..., 1].clamp_min(1.0)}

    def update(self, predictions: list[str], references: list[list[str]]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        if predictions:
            self.sums += self.sample_stats(predictions, references).sum(0).to(self.sums.device)

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        values = self.reduce(self.sums)
        return values[self.primary] if len(values) == 1 else values


class MeanMetric(StatsMetric):
    """The mean of one score per sample; subclasses implement ``score``."""

    def score(self, prediction: str, references: list[str]) -> float:
        raise NotImplementedError

    def sample_stats(self, predictions: list[str], references: list[list[str]]) -> torch.Tensor:
        scores = [self.score(p, r) for p, r in zip(predictions, references)]
        return torch.tensor([[s, 1.0] for s in scores], dtype=torch.float64).reshape(-1, 2)
