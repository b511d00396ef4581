"""Metrics, registered through the plugin hooks.

Metric classes are ``torchmetrics.Metric``s, so each is registered as a factory that imports its
module on first use: listing plugins stays free of torch. The classes are importable from here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import lazy_factory

_HOME = {
    "ANLS": "anls", "ExactMatch": "exact_match", "MassInBox": "localisation", "MeanMetric": "base",
    "POPE": "pope", "PointingGame": "localisation", "StatsMetric": "base", "VQAAccuracy": "vqa",
    "normalize": "exact_match", "normalize_answer": "vqa",
}  # fmt: skip

METRICS = {  # name -> (class, summary shown by ``mllm-refine plugins``)
    "exact_match": ("ExactMatch", "Share of predictions equal to any reference answer after ``normalize``."),
    "vqa_accuracy": ("VQAAccuracy", "VQAv2 accuracy (official normalisation, ten leave-one-out subsets, min(1, matches/3))."),
    "anls": ("ANLS", "Average normalised Levenshtein similarity, threshold 0.5 (DocVQA)."),
    "pope": ("POPE", "POPE accuracy, precision, recall, F1 and yes-ratio (\"yes\" is the positive class)."),
    "pointing_game": ("PointingGame", "Share of maps whose largest cell (first in raster order) overlaps the target box."),
    "mass_in_box": ("MassInBox", "Share of each map's positive mass inside the target box, averaged over maps."),
}  # fmt: skip


@hookimpl
def register_metrics(register: Callable[[str, Callable], None]) -> None:
    for name, (cls, summary) in METRICS.items():
        register(name, lazy_factory(f"mllm_refine.metrics.{_HOME[cls]}:{cls}", summary))


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'mllm_refine.metrics' has no attribute {name!r}")
    return getattr(import_module(f"mllm_refine.metrics.{_HOME[name]}"), name)


__all__ = sorted(_HOME)
