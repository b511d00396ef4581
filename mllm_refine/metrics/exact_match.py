"""Exact match after light normalisation, as a torchmetrics ``Metric`` (reduces across ranks)."""

from __future__ import annotations

import re
import string

import torch
from torchmetrics import Metric

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, fold white space."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


class ExactMatch(Metric):
    """Share of predictions equal to any reference answer after ``normalize``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[list[str]]) -> None:
        for pred, refs in zip(predictions, references):
            self.correct += float(normalize(pred) in {normalize(r) for r in refs})
            self.total += 1.0

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp_min(1.0)
