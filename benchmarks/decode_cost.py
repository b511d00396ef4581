"""Decode cost of every shipped recipe against vanilla and against the reference style, in one run.

    python benchmarks/decode_cost.py                      # CPU: the scaled LLaVA-1.5 shape
    python benchmarks/decode_cost.py --shape llava-1.5-7b # GPU: the real dimensions, bf16

For each recipe in ``recipes/`` (and vanilla): prefill time, time per generated token (median over
repeats, warm-up excluded), tokens/s at batch 1 and batch 16, and peak memory. For the recipes a
reference-style loop exists for (``benchmarks/reference.py``): the same numbers for that loop at
batch 1, and whether it chose the same tokens. Then peak memory against prompt length for one
recipe, and a torch.profiler breakdown of one refined decode. Writes ``docs/benchmarks.json`` and
the tables of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import measure, report  # noqa: E402
from benchmarks.measure import MemoryMeter, StepClock, Timing, clocked_generate, run_timed  # noqa: E402
from benchmarks.profiling import profile_decode  # noqa: E402
from benchmarks.reference import build_method, reference_generate  # noqa: E402
from benchmarks.shapes import SHAPES, build_shape, image_px, make_samples, prompt_of_length  # noqa: E402
from mllm_refine.data.sample import Sample  # noqa: E402
from mllm_refine.engine import Decoder  # noqa: E402
from mllm_refine.recipes import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-scaled", help="random-weight model shape")
    p.add_argument("--model", help="a registered model name (see `mllm-refine plugins`); replaces --shape")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the shape's own")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, set explicitly")
    p.add_argument("--recipes-dir", type=Path, default=ROOT / "recipes")
    p.add_argument("--recipe", action="append", default=[], help="only these recipes (repeatable); vanilla always runs")
    p.add_argument("--max-new-tokens", type=int, default=16, help="new tokens per batch-1 run")
    p.add_argument("--batch", type=int, default=16, help="the larger batch size")
    p.add_argument("--batch-tokens", type=int, default=8, help="new tokens per run at --batch")
    p.add_argument("--repeats", type=int, default=2, help="timed runs at batch 1 (after a warm-up)")
    p.add_argument("--reference", choices=["both", "nocache", "cache", "none"], default="both")
    p.add_argument("--ref-tokens", type=int, default=8, help="new tokens per reference-style run")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed reference-style runs (after a warm-up)")
    p.add_argument("--memory-recipe", default="dualpd", help="recipe of the memory-versus-length runs")
    p.add_argument("--memory-lengths", default="1024,2048,4096", help="prompt lengths; empty skips")
    p.add_argument("--memory-tokens", type=int, default=2, help="new tokens per memory run")
    p.add_argument("--ref-memory-gb", type=float, default=8.0, help="skip reference runs whose attention maps exceed this")
    p.add_argument("--profile-recipe", default="dualpd", help="recipe to profile; empty skips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--render", action="store_true", help="only rewrite the Markdown tables from --json")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """``(model, processor, name, dtype)`` on ``args.device``."""
    if args.model:
        from mllm_refine.models import load_model as load_registered

        dtype = args.dtype or "float32"
        model, processor = load_registered(args.model, dtype=dtype, device=args.device)
        return model, processor, args.model, dtype
    model, processor, dtype = build_shape(args.shape, args.dtype, args.seed)
    return model.to(args.device), processor, args.shape, dtype


def discover(folder: Path, only: list[str]) -> list[tuple[str, Path | None]]:
    """``(name, path)`` of every recipe file, vanilla first (``None``: no vanilla.yaml, empty parts)."""
    paths = {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    names = [n for n in paths if n != "vanilla" and (not only or n in only)]
    return [("vanilla", paths.get("vanilla"))] + [(n, paths[n]) for n in names]


def make_decoder(model: Any, processor: Any, path: Path | None, tokens: int) -> Decoder:
    """A greedy decoder for the recipe's parts and decode settings (stop strings dropped)."""
    if path is None:
        return Decoder(model, processor, config=None)
    recipe = load_recipe(path)
    config = dataclasses.replace(recipe.decode, max_new_tokens=tokens, do_sample=False, stop=[])
    return Decoder(model, processor, recipe.parts, config)


def weights_mb(model: torch.nn.Module) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def time_ours(
    decoder: Decoder, samples: list[Sample], tokens: int, repeats: int, device: torch.device, warm_up: bool = True
) -> tuple[dict, list]:
    """Timing summary and predictions of ``repeats`` runs, after a 2-token warm-up if asked."""
    if warm_up:
        decoder.config.max_new_tokens = 2
        decoder.generate(samples)
    decoder.config.max_new_tokens = tokens
    timing, meter, preds = Timing(skip=0 if warm_up else 1), MemoryMeter(device), None

    def run(clock: StepClock, generate_start: list[float]) -> Any:
        with clocked_generate(decoder.model, clock, generate_start):
            return decoder.generate(samples)

    for _ in range(repeats):
        preds = run_timed(run, device, timing, meter)
    summary = timing.summary(len(samples))
    summary["peak_delta_mb"] = round(meter.peak_mb, 1)
    return summary, preds


def time_reference(decoder: Decoder, sample: Sample, mode: str, tokens: int, repeats: int, device: torch.device) -> tuple[dict, list[int]] | str:
    """Reference-style loop at batch 1: timing summary and tokens, or why there is none."""
    built = build_method(decoder.parts)
    if isinstance(built, str):
        return built
    method, filters = built
    config = dataclasses.replace(decoder.config, max_new_tokens=tokens)
    eos = decoder._eos_ids(decoder.generation_config())
    args = (decoder.model, decoder.adapter, sample, method, filters)
    reference_generate(*args, dataclasses.replace(config, max_new_tokens=1), eos, mode == "cache", [], [])
    timing, meter, new = Timing(), MemoryMeter(device), []
    for _ in range(repeats):
        new = run_timed(lambda clock, gs: reference_generate(*args, config, eos, mode == "cache", clock.stamps, gs), device, timing, meter)
    summary = timing.summary(1)
    summary["peak_delta_mb"] = round(meter.peak_mb, 1)
    return summary, [t for t in new if t not in eos]


def agreement(ours: list[int], ref: list[int], ref_limit: int) -> tuple[bool, int]:
    """Same tokens over the reference's run (which is ``ref_limit`` tokens or ends at EOS)."""
    n = len(ref)
    same = ours[:n] == ref and (n == ref_limit or len(ours) == n)
    return same, n


def bench_recipe(name: str, path: Path | None, model: Any, processor: Any, samples: list[Sample], args: argparse.Namespace, w_mb: float) -> tuple[dict, Decoder | None, list[int]]:
    """One recipe row: batch-1 and large-batch runs; the decoder and batch-1 tokens for reference runs."""
    device = torch.device(args.device)
    try:
        decoder = make_decoder(model, processor, path, args.max_new_tokens)
        b1, preds = time_ours(decoder, samples[:1], args.max_new_tokens, args.repeats, device)
        # One run at the large batch, warmed by the batch-1 runs: its first step is left out of the median.
        bn, preds_n = time_ours(decoder, samples[: args.batch], args.batch_tokens, 1, device, warm_up=False)
    except Exception as e:  # a recipe that cannot run on this model is reported, the others go on
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"  {name}: skipped: {first}", flush=True)
        return {"recipe": name, "error": f"{type(e).__name__}: {first}"[:160]}, None, []
    for run in (b1, bn):
        run["peak_mb"] = round(w_mb + run["peak_delta_mb"], 1)
    tokens = preds[0].tokens
    consistent = preds_n[0].tokens == tokens[: len(preds_n[0].tokens)] or len(preds_n[0].tokens) < args.batch_tokens
    print(
        f"  {name}: b1 {b1['per_token_ms']} ms/token, prefill {b1['prefill_ms']} ms; "
        f"b{args.batch} {bn['per_token_ms']} ms/step; peak +{b1['peak_delta_mb']} / +{bn['peak_delta_mb']} MiB",
        flush=True,
    )
    row = {"recipe": name, "runs": {"1": b1, str(args.batch): bn}, "tokens_b1": tokens, "batch_agrees_b1": consistent}
    return row, decoder, tokens


def bench_references(name: str, decoder: Decoder, sample: Sample, ours: list[int], args: argparse.Namespace, w_mb: float, prompt_tokens: int) -> list[dict]:
    modes = {"both": ["nocache", "cache"], "none": []}.get(args.reference, [args.reference])
    rows = []
    for mode in modes:
        got = time_reference(decoder, sample, mode, args.ref_tokens, args.ref_repeats, torch.device(args.device))
        if isinstance(got, str):
            return [] if name != "vanilla" else [{"recipe": name, "mode": mode, "error": got}]
        summary, tokens = got
        same, n = agreement(ours, tokens, args.ref_tokens)
        summary["peak_mb"] = round(w_mb + summary["peak_delta_mb"], 1)
        rows.append({"recipe": name, "mode": mode, **summary, "prompt_tokens": prompt_tokens, "agree": same,
                     "compared": n, "tokens": tokens})  # fmt: skip
        print(f"  {name} reference ({mode}): {summary['per_token_ms']} ms/token, agree={same} over {n}", flush=True)
    return rows


def memory_scaling(model: Any, processor: Any, args: argparse.Namespace) -> list[dict]:
    """Peak memory of ours and the reference style (KV cache kept) at growing prompt lengths."""
    lengths = [int(x) for x in args.memory_lengths.split(",") if x.strip()]
    path = args.recipes_dir / f"{args.memory_recipe}.yaml"
    if not lengths or not path.exists():
        return []
    device = torch.device(args.device)
    decoder = make_decoder(model, processor, path, args.memory_tokens)
    rows = []
    for length in lengths:
        sample, tokens = prompt_of_length(decoder.adapter, length, image_px(processor), args.seed)
        ours, preds = time_ours(decoder, [sample], args.memory_tokens, 1, device)
        row = {"recipe": args.memory_recipe, "target_tokens": length, "prompt_tokens": tokens,
               "ours_delta_mb": ours["peak_delta_mb"], "ours_prefill_ms": ours["prefill_ms"]}  # fmt: skip
        info = decoder.adapter.info()
        maps_gb = info.num_layers * info.num_heads * tokens**2 * model.dtype.itemsize / 2**30  # every (H, T, T) map
        got = (
            time_reference(decoder, sample, "cache", args.memory_tokens, 1, device)
            if maps_gb <= args.ref_memory_gb
            else f"its attention maps alone take {maps_gb:.1f} GiB (--ref-memory-gb {args.ref_memory_gb})"
        )
        if isinstance(got, str):
            row["reference_skipped"] = got
        else:
            ref, ref_tokens = got
            row.update(reference_delta_mb=ref["peak_delta_mb"], reference_prefill_ms=ref["prefill_ms"])
            row["agree"] = agreement(preds[0].tokens, ref_tokens, args.memory_tokens)[0]
        print(f"  memory {tokens} tokens: ours +{row['ours_delta_mb']} MiB, reference +{row.get('reference_delta_mb')} MiB", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        result = json.loads(args.json.read_text())
        report.add_ratios(result)
        report.write(result, args.json, args.markdown)
        return 0
    torch.set_num_threads(args.threads)
    pinned = measure.pin_allocator()
    device = torch.device(args.device)
    model, processor, model_name, dtype = load_model(args)
    w_mb = weights_mb(model)
    samples = make_samples(args.batch, image_px=image_px(processor), seed=args.seed)
    recipes = discover(args.recipes_dir, args.recipe)
    print(f"{model_name} ({dtype}, {w_mb:.0f} MiB), {len(recipes)} recipes, {args.threads} threads", flush=True)
    result: dict[str, Any] = {
        "command": "python benchmarks/decode_cost.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": measure.machine(args.threads, device),
        "recipes": [],
        "reference": [],
    }
    prompt_tokens = image_tokens = 0
    for name, path in recipes:
        row, decoder, tokens = bench_recipe(name, path, model, processor, samples, args, w_mb)
        result["recipes"].append(row)
        if decoder is None:
            continue
        ids = decoder.adapter.prepare(samples[:1])["input_ids"]
        prompt_tokens, image_tokens = ids.shape[1], int(decoder.adapter.image_keys(ids).sum())
        result["reference"] += bench_references(name, decoder, samples[0], tokens, args, w_mb, prompt_tokens)
    result["settings"] = {
        "model": model_name, "dtype": dtype, "device": str(device), "prompt_tokens": prompt_tokens,
        "image_tokens": image_tokens, "max_new_tokens": args.max_new_tokens, "batch": args.batch,
        "batch_tokens": args.batch_tokens, "repeats": args.repeats, "ref_tokens": args.ref_tokens,
        "ref_repeats": args.ref_repeats, "memory_tokens": args.memory_tokens, "weights_mb": round(w_mb, 1),
        "memory_method": "torch.cuda.max_memory_allocated" if device.type == "cuda" else
        f"resident-set high-water mark above the start (mmap-backed allocations: {pinned}); peak = weights + delta",
    }  # fmt: skip
    result["memory_scaling"] = memory_scaling(model, processor, args)
    profile_path = args.recipes_dir / f"{args.profile_recipe}.yaml"
    if args.profile_recipe and profile_path.exists():
        decoder = make_decoder(model, processor, profile_path, args.max_new_tokens)
        result["profile"] = profile_decode(decoder, samples[:1], args.profile_recipe)
    report.add_ratios(result)
    report.write(result, args.json, args.markdown)
    print("\n".join(report.targets(result)))
    print(f"wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
