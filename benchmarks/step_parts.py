"""Where a decode step's time goes, per recipe: the model's forward, each probed block's capture
call (the eager row and the head filters acting on it) and the step processor, side by side.

    python benchmarks/step_parts.py --batch 16 --recipe dualpd --recipe vrga --recipe dualpd_vrga

Each recipe answers the same batch ``--rounds`` times, in turn with the others (the first
round is a warm-up); each number is the median over every decode step of every timed round
(the prefill's forward and capture calls excluded). Times are wall-clock inside the decode:
compare them within one run only.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode_cost import ROOT, discover, make_decoder  # noqa: E402
from benchmarks.measure import sync, wrapped  # noqa: E402
from benchmarks.shapes import SHAPES, build_shape, make_samples  # noqa: E402
from mllm_refine.engine import capture, processor  # noqa: E402

Times = dict[str, list[float]]


def timer(times: Times, key: str, device: torch.device) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a method so the wall time of each call is appended to ``times[key]``."""

    def around(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)  # generate reads the forward's signature
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            sync(device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(device)
                times[key].append(time.perf_counter() - start)

        return wrapper

    return around


def measure(model: Any, run: Callable[[], Any], times: Times) -> dict[str, list[float]]:
    """One answer through ``run`` with its forwards timed beside the capture and processor calls
    already wrapped; the first forward (the prefill) and the capture calls it made are dropped."""
    times.clear()
    calls_before: list[int] = []  # capture calls made before each forward

    def forward(original: Callable[..., Any]) -> Callable[..., Any]:
        timed = timer(times, "forward", model.device)(original)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls_before.append(len(times["capture"]))
            return timed(*args, **kwargs)

        return wrapper

    with wrapped(model, "forward", forward):
        run()
    prefill_calls = calls_before[1] if len(calls_before) > 1 else len(times["capture"])
    steps = max(1, len(times["forward"]) - 1)
    return {
        "forward": times["forward"][1:],
        "capture": times["capture"][prefill_calls:],
        "processor": list(times["processor"]),
        "calls_per_step": [(len(times["capture"]) - prefill_calls) / steps],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-scaled")
    p.add_argument("--recipe", action="append", default=[], help="recipes to time beside vanilla (repeatable)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=10, help="new tokens per answer")
    p.add_argument("--rounds", type=int, default=7, help="rounds per recipe, the first a warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, set explicitly")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, proc, dtype = build_shape(a.shape, None, 0)
    samples = make_samples(a.batch)
    decoders = {n: make_decoder(model, proc, path, a.tokens, n) for n, path in discover(ROOT / "recipes", a.recipe)}
    times: Times = defaultdict(list)
    kept: dict[str, dict[str, list[float]]] = {n: defaultdict(list) for n in decoders}
    device = model.device
    with wrapped(capture.Capture, "on_attention", timer(times, "capture", device)), wrapped(
        processor.RefineProcessor, "__call__", timer(times, "processor", device)
    ):
        for r in range(a.rounds):
            for name, decoder in decoders.items():
                with torch.no_grad():
                    got = measure(model, lambda d=decoder: d.generate(samples), times)
                if r:
                    for key, values in got.items():
                        kept[name][key].extend(values)
    print(f"shape {a.shape} ({dtype}), batch {a.batch}, {a.tokens} tokens, {a.rounds - 1} timed rounds, {a.threads} thread(s)")
    print("| recipe | model forward per step (ms) | probed blocks per step | per probed block (ms) | step processor (ms) |")
    print("|---|---:|---:|---:|---:|")

    def ms(values: list[float]) -> str:
        return f"{1e3 * statistics.median(values):.2f}" if values else "—"

    for name, k in kept.items():
        print(f"| {name} | {ms(k['forward'])} | {statistics.median(k['calls_per_step']):.0f} | {ms(k['capture'])} | {ms(k['processor'])} |")


if __name__ == "__main__":
    main()
