"""ANLS (average normalised Levenshtein similarity), the DocVQA / ST-VQA score.

Per sample: the best over reference answers of ``1 - NL`` when ``NL < threshold`` else 0, where
``NL = lev(a, p) / max(len(a), len(p))`` on strings lowercased, stripped and with white space
folded, on both sides.
"""

from __future__ import annotations

from mllm_refine.metrics.base import MeanMetric


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    pred, best = _norm(prediction), 0.0
    for answer in answers:
        gold = _norm(answer)
        longest = max(len(gold), len(pred))
        nl = levenshtein(gold, pred) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


class ANLS(MeanMetric):
    """Average normalised Levenshtein similarity, threshold 0.5 (DocVQA)."""

    primary = "anls"

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def score(self, prediction: str, references: list[str]) -> float:
        return anls(prediction, references, self.threshold)
