"""Clocks and memory meters shared by our decoder and the reference-style loop.

Time: ``StepClock`` stamps the moment each new token has been chosen (a ``StoppingCriteria``
slipped into ``generate``; the reference loop stamps by hand at the same point), so
``stamps[0] - start`` is the prefill (the first forward plus the first token's processing) and
each later gap is one decode step: forward, parts, penalties and the choice.

Memory: on CUDA, ``torch.cuda.max_memory_allocated``. On a CPU, the resident-set high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set at the start;
``tracemalloc`` would miss tensors (torch allocates outside Python's allocator). Memory runs are
separate from timing runs: in them large allocations are forced onto ``mmap`` (``set_allocator``)
so freed tensors leave the resident set at once and every measurement starts from the same
floor; timing runs keep the heap's reuse, which page faults would otherwise swamp.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import StoppingCriteria, StoppingCriteriaList

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def set_allocator(exact: bool) -> bool:
    """glibc only; False where it is not glibc.

    ``exact=True`` (memory runs): allocations above 64 KiB use ``mmap`` and go back to the OS when
    freed, and the heap is trimmed now, so the resident set follows the live tensors.
    ``exact=False`` (timing runs): large blocks stay in the heap for reuse (32 MiB ``mmap``
    threshold, 64 MiB trim threshold), so a step does not pay page faults for every tensor it
    allocates, which would add time and noise alike to every recipe.
    """
    libc = _libc()
    if libc is None:
        return False
    mmap_at, trim_at = (64 * 1024, 128 * 1024) if exact else (32 * 2**20, 64 * 2**20)
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_at)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_at))
    if exact:
        trim_heap()
    return ok


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """glibc only: give the pages of every free heap chunk back to the OS (``malloc_trim(0)``)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OpCount(TorchDispatchMode):
    """While active, counts each aten op dispatched, by name (``ops``): the same on every machine,
    where a time is not."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@dataclass
class MemoryMeter:
    """Peak memory of the code run inside ``measure()``, in MiB above what was in use before."""

    device: torch.device
    peak_mb: float = 0.0  # the largest delta seen over every ``measure`` block

    @contextmanager
    def measure(self) -> Iterator[None]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield
            torch.cuda.synchronize(self.device)
            delta = torch.cuda.max_memory_allocated(self.device) - base
        else:
            trim_heap()  # free heap chunks leave the resident set: reusing them counts again
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            base = _status_kb("VmRSS") * 1024
            yield
            delta = _status_kb("VmHWM") * 1024 - base
        self.peak_mb = max(self.peak_mb, delta / 2**20)


class StepClock(StoppingCriteria):
    """Never stops generation; stamps the time each step's tokens are chosen."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@contextmanager
def wrapped(owner: Any, attr: str, around: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """While inside, ``owner.attr`` is ``around(original)``; then the original again (a class's
    method is put back, an instance's own attribute is removed so the class's shows through)."""
    original = getattr(owner, attr)
    setattr(owner, attr, around(original))
    try:
        yield
    finally:
        if isinstance(owner, type):
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)


@contextmanager
def clocked_generate(model: torch.nn.Module, clock: StepClock, start: list[float]) -> Iterator[None]:
    """While active, ``model.generate`` records its start in ``start`` and stamps steps on ``clock``."""
    original = type(model).generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(clock)
        sync(clock.device)
        start.append(time.perf_counter())
        return original(model, *args, stopping_criteria=criteria, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate


@dataclass
class Timing:
    """Step times of one configuration, over its measured repeats (warm-up excluded)."""

    prefill_s: list[float] = field(default_factory=list)  # one per repeat
    step_s: list[float] = field(default_factory=list)  # every decode step of every repeat
    run_step_s: list[float] = field(default_factory=list)  # median decode step of each repeat, in order
    total_s: list[float] = field(default_factory=list)  # end to end, input refiners included
    tokens: int = 0  # new tokens per sample in the last repeat
    skip: int = 0  # leading decode steps of each run left out (a run without warm-up)

    def add(self, start: float, generate_start: float, stamps: list[float], end: float) -> None:
        self.prefill_s.append(stamps[0] - generate_start)
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        steps = steps[self.skip :] if len(steps) > self.skip else steps
        self.step_s.extend(steps)
        if steps:
            self.run_step_s.append(statistics.median(steps))
        self.total_s.append(end - start)
        self.tokens = len(stamps)

    def summary(self, batch: int) -> dict[str, float | int | None]:
        step = statistics.median(self.step_s) if self.step_s else None
        return {
            "batch": batch,
            "prefill_ms": round(1e3 * statistics.median(self.prefill_s), 2),
            "per_token_ms": round(1e3 * step, 3) if step else None,
            "tokens_per_s": round(batch / step, 2) if step else None,
            "end_to_end_ms": round(1e3 * statistics.median(self.total_s), 2),
            "new_tokens": self.tokens,
            "steps_timed": len(self.step_s),
            "per_token_runs_ms": [round(1e3 * s, 3) for s in self.run_step_s],
        }


def run_timed(
    fn: Callable[[StepClock, list[float]], Any], device: torch.device, timing: Timing | None, meter: MemoryMeter | None
) -> Any:
    """Run ``fn(clock, generate_start)`` once, under ``meter`` if given; add its times to ``timing``
    if given (a memory run is not timed: its allocator setting slows it)."""
    clock, generate_start = StepClock(device), []
    with meter.measure() if meter is not None else nullcontext():
        sync(device)
        start = time.perf_counter()
        result = fn(clock, generate_start)
        sync(device)
        end = time.perf_counter()
    if timing is not None:
        timing.add(start, generate_start[0] if generate_start else start, clock.stamps, end)
    return result


def machine(threads: int, device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: CPU model and cores, GPU, threads and library versions."""
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "load_average": load,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }
