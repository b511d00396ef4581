"""Cost per token against answer length: the step time around answer token 500 against the
step time around token 20, in one long greedy run per recipe at batch 1 (end tokens and stop
strings off, so every run reaches the same length).

A step's cost that grows with the answer shows here: attention over the keys is linear in
them, and a cache that copies itself at every step (transformers' ``DynamicCache``) is too.
"""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from benchmarks.measure import StepClock, clocked_generate
from mllm_refine.data.sample import Sample
from mllm_refine.engine import Decoder

WINDOW = 20  # steps on each side of a window's token: its median is the window's step time


@contextmanager
def no_end_token(decoder: Decoder) -> Iterator[None]:
    """The decoder's end token becomes an image placeholder, which the engine never emits, so a
    run lasts ``max_new_tokens`` whatever the model says."""
    original = decoder.generation_config

    def generation_config() -> Any:
        gc = original()
        gc.eos_token_id = decoder.adapter.image_token_ids[0]
        return gc

    decoder.generation_config = generation_config  # type: ignore[method-assign]
    try:
        yield
    finally:
        del decoder.generation_config


def window(steps: list[float], token: int) -> float:
    """Median step time of the ``WINDOW`` steps that end at answer token ``token``."""
    return statistics.median(steps[max(0, token - WINDOW) : token])


def line_through(steps: list[float], at: tuple[int, int], gap: int = WINDOW) -> tuple[float, float]:
    """The step times at answer tokens ``at`` on a Theil-Sen line through every step of a run:
    the slope is the median of the slopes between steps at least ``gap`` apart, the intercept the
    median residual. A slow spell of the machine that covers one window moves a window's median
    but hardly this line, as long as it covers well under half of the run."""
    t = np.asarray(steps, dtype=np.float64)  # (S,) step i makes token i + 1
    x = np.arange(1, len(t) + 1, dtype=np.float64)  # (S,) the token each step makes
    i, j = np.triu_indices(len(t), k=gap)  # every pair at least gap apart
    slope = float(np.median((t[j] - t[i]) / (x[j] - x[i])))
    intercept = float(np.median(t - slope * x))
    return intercept + slope * at[0], intercept + slope * at[1]


def length_cost(decoders: dict[str, Decoder], sample: Sample, tokens: int, rounds: int, early: int = 20) -> list[dict[str, Any]]:
    """Per recipe: ms per token at answer token ``early`` and at ``tokens - WINDOW``, and their
    ratio (median over ``rounds`` interleaved rounds), from the two windows' medians and from a
    line through every step (``line_through``)."""
    late = tokens - WINDOW
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in decoders}
    lines: dict[str, list[tuple[float, float]]] = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decoder in decoders.items():
            decoder.config.max_new_tokens = tokens
            clock = StepClock(decoder.model.device)
            with no_end_token(decoder), clocked_generate(decoder.model, clock, []), torch.no_grad():
                decoder.generate([sample])
            steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]  # step i makes token i + 1
            runs[name].append((window(steps, early), window(steps, late)))
            lines[name].append(line_through(steps, (early, late)))
    rows = []
    for name, pairs in runs.items():
        fit = lines[name]
        rows.append({
            "recipe": name, "early_token": early, "late_token": late,
            "early_ms": round(1e3 * statistics.median(a for a, _ in pairs), 3),
            "late_ms": round(1e3 * statistics.median(b for _, b in pairs), 3),
            "late_over_early": round(statistics.median(b / a for a, b in pairs), 3),
            "early_line_ms": round(1e3 * statistics.median(a for a, _ in fit), 3),
            "late_line_ms": round(1e3 * statistics.median(b for _, b in fit), 3),
            "line_late_over_early": round(statistics.median(b / a for a, b in fit), 3),
        })  # fmt: skip
    return rows
