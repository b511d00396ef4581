"""A probed block's eager row over the growing cache's views against the same row over its
whole buffers (``engine.capture.row_scores`` / ``row_output`` with and without ``room``).

    python benchmarks/row_layout.py --threads 2

The cache hands attention ``[:, :, :K]`` views of ``(B, H, C, Dh)`` buffers: each head's keys are
contiguous, but one head's start is ``C x Dh`` from the last, not ``K x Dh``. Per layout, dtype
and batch this prints the median time of the two products (scores, then the weighted values)
over ``--repeats`` calls, interleaved, and their ratio; the outputs are compared for equality.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.shapes import DTYPES  # noqa: E402
from mllm_refine.engine.capture import row_output, row_scores  # noqa: E402


def case(batch: int, heads: int, keys: int, dim: int, room: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Buffers ``(B, H, K + room, Dh)`` zero past ``K``, their ``[:, :, :K]`` views, a query row and
    its softmax weights."""
    g = torch.Generator().manual_seed(seed)
    k_buf = torch.zeros(batch, heads, keys + room, dim, dtype=dtype)
    v_buf = torch.zeros_like(k_buf)
    k_buf[:, :, :keys] = torch.randn(batch, heads, keys, dim, generator=g).to(dtype)
    v_buf[:, :, :keys] = torch.randn(batch, heads, keys, dim, generator=g).to(dtype)
    query = torch.randn(batch, heads, 1, dim, generator=g).to(dtype)  # (B, H, 1, Dh)
    probs = torch.softmax(torch.randn(batch, heads, keys, generator=g), -1)  # (B, H, K) float32
    return k_buf, v_buf, k_buf[:, :, :keys], v_buf[:, :, :keys], query, probs


def median_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time per call of each callable, the callables interleaved call by call."""
    for f in calls.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, f in calls.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def compare(
    k_buf: torch.Tensor, v_buf: torch.Tensor, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor, probs: torch.Tensor, repeats: int
) -> tuple[dict[str, float], bool]:
    """Timings of the row over the views and over the buffers, and whether both give the same
    scores and the same output."""

    def views() -> tuple[torch.Tensor, torch.Tensor]:
        return row_scores(query, key, None), row_output(probs, value, None, query.dtype)

    def buffers() -> tuple[torch.Tensor, torch.Tensor]:
        return row_scores(query, key, None, k_buf), row_output(probs, value, None, query.dtype, v_buf)

    same = all(torch.equal(a, b) for a, b in zip(views(), buffers()))
    return median_ms({"views": views, "buffers": buffers}, repeats), same


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--keys", type=int, default=600, help="cached positions the row reads")
    ap.add_argument("--dim", type=int, default=128, help="head width")
    ap.add_argument("--room", type=int, default=128, help="buffer positions past the keys")
    ap.add_argument("--batch", type=int, action="append", help="repeatable (default 1 and 16)")
    ap.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="repeatable (default bfloat16, float32)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; {args.heads} heads of {args.dim}, {args.keys} keys + {args.room} room")
    print("| dtype | batch | views ms | whole buffers ms | views / buffers | equal |")
    print("|---|---:|---:|---:|---:|---|")
    for dtype_name in args.dtype or ["bfloat16", "float32"]:
        for batch in args.batch or [1, 16]:
            tensors = case(batch, args.heads, args.keys, args.dim, args.room, DTYPES[dtype_name])
            t, same = compare(*tensors, repeats=args.repeats)
            print(f"| {dtype_name} | {batch} | {t['views']:.3f} | {t['buffers']:.3f} | {t['views'] / t['buffers']:.2f} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
