"""The growing KV cache against transformers' ``DynamicCache``, side by side in one run.

    python benchmarks/kv_cache.py --threads 1 --tokens 520 --rounds 3

Each recipe decodes long answers (end token off; batch 1 unless ``--batch``) twice per round: with the
engine's ``GrowingCache`` and with ``DynamicCache`` (the engine told there is no growing cache
for this model). Prints ms per token at answer token 20 and near the end for both, and how
much the late token costs against the early one. The process keeps glibc's default allocator
(``decode_cost.py`` tunes it for its timing runs): that is what ``mllm-refine run`` meets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mllm_refine.engine.decoder as decoder_module  # noqa: E402
from benchmarks.decode_cost import make_decoder  # noqa: E402
from benchmarks.length import WINDOW, no_end_token, window  # noqa: E402
from benchmarks.measure import StepClock, clocked_generate  # noqa: E402
from benchmarks.shapes import SHAPES, build_shape, image_px, make_samples  # noqa: E402


@contextmanager
def dynamic_cache() -> Iterator[None]:
    """The decoder falls back to ``generate``'s own ``DynamicCache``."""
    original = decoder_module.growing_cache
    decoder_module.growing_cache = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        decoder_module.growing_cache = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-scaled")
    p.add_argument("--recipe", action="append", default=None, help="recipes (repeatable); default vanilla and dualpd")
    p.add_argument("--tokens", type=int, default=520)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, set explicitly")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, processor, _ = build_shape(args.shape, None, 0)
    samples = make_samples(args.batch, image_px=image_px(processor), seed=0)
    names = args.recipe or ["vanilla", "dualpd"]
    decoders = {n: make_decoder(model, processor, ROOT / "recipes" / f"{n}.yaml", args.tokens, n) for n in names}
    late = args.tokens - WINDOW
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for name, decoder in decoders.items():
            for cache in ("growing", "dynamic"):
                decoder.config.max_new_tokens = args.tokens
                clock = StepClock(model.device)
                with no_end_token(decoder), clocked_generate(model, clock, []), torch.no_grad():
                    with dynamic_cache() if cache == "dynamic" else nullcontext():
                        decoder.generate(samples)
                steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
                times.setdefault((name, cache), []).append((window(steps, 20), window(steps, late)))
    print(f"{args.shape}, {args.threads} thread(s), batch {args.batch}, {args.tokens} new tokens, {args.rounds} rounds, glibc's default allocator")
    print(f"| recipe | cache | ms/token at token 20 | ms/token at token {late} | token {late} / token 20 |")
    print("|---|---|---:|---:|---:|")
    for (name, cache), pairs in times.items():
        early = statistics.median(a for a, _ in pairs)
        end = statistics.median(b for _, b in pairs)
        growth = statistics.median(b / a for a, b in pairs)
        print(f"| {name} | {cache} | {1e3 * early:.2f} | {1e3 * end:.2f} | {growth:.2f} |")
    for name in names:
        g = [b for _, b in times[(name, "growing")]]
        d = [b for _, b in times[(name, "dynamic")]]
        print(f"{name}: at token {late} the growing cache's step is {statistics.median(x / y for x, y in zip(g, d)):.2f}x DynamicCache's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
