"""POPE: yes/no object probing scored as binary classification with "yes" as positive.

A free-form answer is read as the POPE evaluation does: keep the first sentence, drop commas,
and it is "no" when a word is "no" or "not", else "yes" (compared lowercased here).
"""

from __future__ import annotations

from mllm_refine.lazy import torch
from mllm_refine.metrics.base import StatsMetric


def yes_no(text: str) -> str:
    first = text.split(".")[0].replace(",", "")
    return "no" if {"no", "not"} & set(first.lower().split()) else "yes"


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-12), torch.zeros_like(a))


class POPE(StatsMetric):
    """POPE accuracy, precision, recall, F1 and yes-ratio ("yes" is the positive class)."""

    stats = ("tp", "fp", "tn", "fn")
    primary = "accuracy"

    def sample_stats(self, predictions: list[str], references: list[list[str]]) -> torch.Tensor:
        rows = []
        for pred, refs in zip(predictions, references):
            label = refs[0].strip().lower() if refs else ""
            if label not in ("yes", "no"):
                raise ValueError(f"POPE labels are yes or no, got {refs!r}")
            said_yes = yes_no(pred) == "yes"
            is_yes = label == "yes"
            rows.append([said_yes and is_yes, said_yes and not is_yes, not said_yes and not is_yes, not said_yes and is_yes])
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)

    def reduce(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        tp, fp, tn, fn = sums.unbind(-1)
        n = tp + fp + tn + fn
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        return {
            "accuracy": _ratio(tp + tn, n),
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "yes_ratio": _ratio(tp + fp, n),
        }
