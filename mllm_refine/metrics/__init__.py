"""Metrics, registered through the plugin hooks."""

from __future__ import annotations

from typing import Callable

from mllm_refine.hookspecs import hookimpl
from mllm_refine.metrics.exact_match import ExactMatch, normalize


@hookimpl
def register_metrics(register: Callable[[str, Callable], None]) -> None:
    register("exact_match", ExactMatch)


__all__ = ["ExactMatch", "normalize"]
