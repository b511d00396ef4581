"""Exact match after light normalisation, as a torchmetrics ``Metric`` (reduces across ranks)."""

from __future__ import annotations

import re
import string

from mllm_refine.metrics.base import MeanMetric

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, fold white space."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


class ExactMatch(MeanMetric):
    """Share of predictions equal to any reference answer after ``normalize``."""

    primary = "exact_match"

    def score(self, prediction: str, references: list[str]) -> float:
        return float(normalize(prediction) in {normalize(r) for r in references})
