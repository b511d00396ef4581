"""What a decode step's selector and combiner cost warm and cold, per recipe, side by side.

    python benchmarks/cold_ops.py --recipe dualpd_layer --recipe deco --recipe dola

At batch 1 the parts of a step run once each, right after the model's forward has streamed its
weights through the caches, so every op they dispatch starts cold. For one decode step of each
recipe this times ``select`` followed by ``combine`` in a tight loop (warm) and each time after a
sweep over a buffer as large as the model's weights (cold), beside the aten ops the pair
dispatches; a one-op add on the step's logits is the floor. Times are medians, one thread unless
``--threads`` says otherwise; compare them within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode_cost import ROOT, discover, make_decoder, weights_mb  # noqa: E402
from benchmarks.measure import OpCount  # noqa: E402
from benchmarks.shapes import SHAPES, build_shape, make_samples  # noqa: E402
from mllm_refine.engine.step_view import StepView  # noqa: E402

STEP = 3  # the decode step whose view is timed


def step_call(decoder: Any, samples: list) -> Callable[[], Any]:
    """``select`` then ``combine`` of ``decoder``'s parts on a fresh view of decode step ``STEP``
    (what it captured is put back before each call)."""
    kept: dict[str, Any] = {}

    def observe(view: StepView, logits: torch.Tensor) -> None:
        if view.step == STEP:
            kept.update(view=view, attention=dict(view.capture.attention), hidden=dict(view.capture.hidden))

    with torch.no_grad():
        decoder.generate(samples, observe=observe)
    view, capture = kept["view"], kept["view"].capture
    selector, combiner = decoder.parts.layer_selector, decoder.parts.logit_combiner

    def run() -> Any:
        capture.attention.update(kept["attention"])
        capture.hidden.update(kept["hidden"])
        fresh = StepView(STEP, view.input_ids, view.logits, capture, view.adapter)
        layer = selector.select(fresh) if selector is not None else None
        return combiner.combine(fresh, layer) if combiner is not None else fresh.logits

    return run


def warm_us(f: Callable[[], Any], repeats: int) -> float:
    for _ in range(20):
        f()
    start = time.perf_counter()
    for _ in range(repeats):
        f()
    return 1e6 * (time.perf_counter() - start) / repeats


def cold_us(f: Callable[[], Any], sweep: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sweep.add_(1.0)  # reads and writes every byte: the caches now hold the sweep
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-scaled")
    p.add_argument("--recipe", action="append", default=[], help="recipes with a selector or a combiner (repeatable)")
    p.add_argument("--repeats", type=int, default=400, help="timed calls per measurement")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, set explicitly")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, proc, dtype = build_shape(a.shape, None, 0)
    samples = make_samples(1)
    sweep = torch.zeros(int(weights_mb(model) * 2**20 / 4))  # float32: the weights' bytes
    rows = []
    with torch.no_grad():
        for name, path in discover(ROOT / "recipes", a.recipe or ["dualpd_layer"], control=False):
            if name == "vanilla":
                continue
            run = step_call(make_decoder(model, proc, path, STEP + 2, name), samples)
            with OpCount() as count:
                run()
            rows.append((name, count.total, warm_us(run, a.repeats), cold_us(run, sweep, a.repeats)))
        logits = torch.zeros(1, model.config.get_text_config().vocab_size)
        floor = ("one add (floor)", 1, warm_us(lambda: logits.add(1.0), a.repeats), cold_us(lambda: logits.add(1.0), sweep, a.repeats))
    print(f"shape {a.shape} ({dtype}), batch 1, decode step {STEP}, sweep {sweep.numel() * 4 / 2**20:.0f} MiB, {a.threads} thread(s)")
    print("| recipe | aten ops | warm µs | cold µs | cold / warm | cold µs per op |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ops, warm, cold in [*rows, floor]:
        print(f"| {name} | {ops} | {warm:.1f} | {cold:.1f} | {cold / warm:.2f} | {cold / ops:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
