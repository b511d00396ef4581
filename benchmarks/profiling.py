"""torch.profiler breakdown of the decode steps of one refined generate (the prefill excluded).

The engine's regions are labelled with ``record_function`` by wrapping their methods for the
duration of the profile only: the model forward, the attention probes and filters
(``Capture.on_attention``), the logit lens (``StepView._project``) and the whole per-step
processor (``RefineProcessor.__call__``: selector, combiner, guard, penalties).
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.measure import StepClock, clocked_generate, wrapped
from mllm_refine.data.sample import Sample
from mllm_refine.engine import Decoder
from mllm_refine.engine.capture import Capture
from mllm_refine.engine.processor import RefineProcessor
from mllm_refine.engine.step_view import StepView

REGIONS = [
    (RefineProcessor, "__call__", "engine: step processor (parts, guard, penalties)"),
    (Capture, "on_attention", "engine: attention probes and filters"),
    (StepView, "_project", "engine: logit lens (norm + lm_head)"),
]
FORWARD = "model forward"
TOP_OPS = 8


def _labelled(label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a method so each call is one ``record_function`` region named ``label``."""

    def around(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with record_function(label):
                return original(*args, **kwargs)

        return wrapper

    return around


class _StartProfiler(StepClock):
    """Starts the profiler once the first token is chosen, so only decode steps are recorded."""

    def __init__(self, device: torch.device, prof: profile) -> None:
        super().__init__(device)
        self.prof = prof

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = super().__call__(input_ids, scores, **kwargs)
        if len(self.stamps) == 1:
            self.prof.start()
        return done


def profile_decode(decoder: Decoder, samples: list[Sample], recipe: str) -> dict[str, Any]:
    """Regions and top operators of the decode steps, in ms and as a share of their wall time."""
    device = decoder.model.device
    decoder.generate(samples)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    clock = _StartProfiler(device, prof)
    with ExitStack() as stack:
        for owner, attr, label in REGIONS:
            stack.enter_context(wrapped(owner, attr, _labelled(label)))
        stack.enter_context(wrapped(decoder.model, "forward", _labelled(FORWARD)))
        stack.enter_context(clocked_generate(decoder.model, clock, []))
        with torch.no_grad():
            decoder.generate(samples)
        prof.stop()
    wall_ms = 1e3 * (clock.stamps[-1] - clock.stamps[0])
    events = {e.key: e for e in prof.key_averages()}
    rows = []
    for label in [FORWARD] + [label for _, _, label in REGIONS]:
        e = events.get(label)
        if e is not None:
            rows.append({"name": label, "self_ms": None, "total_ms": e.cpu_time_total / 1e3, "calls": e.count})
    ops = sorted((e for e in events.values() if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
    for e in ops[:TOP_OPS]:
        rows.append({"name": e.key, "self_ms": e.self_cpu_time_total / 1e3, "total_ms": e.cpu_time_total / 1e3, "calls": e.count})
    for row in rows:
        row["share"] = (row["self_ms"] if row["self_ms"] is not None else row["total_ms"]) / wall_ms if wall_ms else 0.0
    return {"recipe": recipe, "steps": len(clock.stamps) - 1, "decode_wall_ms": round(wall_ms, 2), "rows": rows}
