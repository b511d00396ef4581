"""``StepView.lens_at`` after ``lenses``: the pick from the lenses' own product against a pick
from a second stack of them, side by side, at a real vocabulary.

    python benchmarks/lens_pick.py --batch 16 --vocab 32000 --candidates 16

DoLa's selector makes every candidate's lens in one product and its contrast then picks each
sample's row; stacking the lenses again copies ``(N, B, V)`` floats per step. Medians over
``--rounds`` alternating calls, one thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mllm_refine.engine.step_view import StepView  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--candidates", type=int, default=16, help="layers whose lenses one lenses call makes")
    p.add_argument("--width", type=int, default=64, help="hidden size (the pick does not depend on it)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, set explicitly")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, V, layers = a.batch, a.vocab, list(range(a.candidates))
    adapter = SimpleNamespace(
        info=lambda: SimpleNamespace(num_layers=a.candidates), final_norm=nn.LayerNorm(a.width), lm_head=nn.Linear(a.width, V, bias=False)
    )  # fmt: skip
    capture = SimpleNamespace(hidden={l: torch.randn(B, a.width) for l in layers}, state={}, tables={})
    chosen = torch.randint(0, a.candidates, (B,))  # (B,) each sample's layer

    def pick(stack: bool) -> float:
        view = StepView(0, torch.zeros(B, 1, dtype=torch.long), torch.randn(B, V), capture, adapter)
        view.lenses(layers)  # (B, N, V), one product
        if stack:
            view._products.clear()  # the pick falls back to stacking the cached lenses
        start = time.perf_counter()
        view.lens_at(chosen)
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.no_grad():
        for _ in range(a.rounds + 1):  # the first round warms up
            for stack in (False, True):
                times[stack].append(pick(stack))
    product, stacked = (1e3 * statistics.median(times[s][1:]) for s in (False, True))
    print(f"batch {B}, vocab {V}, {a.candidates} lenses, {a.threads} thread(s), {a.rounds} rounds")
    print(f"pick from the product: {product:.3f} ms; from a second stack: {stacked:.3f} ms; stack / product {stacked / product:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
