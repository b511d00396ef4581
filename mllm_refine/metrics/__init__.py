"""Metrics, registered through the plugin hooks."""

from __future__ import annotations

from typing import Callable

from mllm_refine.hookspecs import hookimpl
from mllm_refine.metrics.anls import ANLS
from mllm_refine.metrics.base import MeanMetric, StatsMetric
from mllm_refine.metrics.exact_match import ExactMatch, normalize
from mllm_refine.metrics.localisation import MassInBox, PointingGame
from mllm_refine.metrics.pope import POPE
from mllm_refine.metrics.vqa import VQAAccuracy, normalize_answer


@hookimpl
def register_metrics(register: Callable[[str, Callable], None]) -> None:
    register("exact_match", ExactMatch)
    register("vqa_accuracy", VQAAccuracy)
    register("anls", ANLS)
    register("pope", POPE)
    register("pointing_game", PointingGame)
    register("mass_in_box", MassInBox)


__all__ = [
    "ANLS", "POPE", "ExactMatch", "MassInBox", "MeanMetric", "PointingGame", "StatsMetric", "VQAAccuracy", "normalize",
    "normalize_answer",
]  # fmt: skip
