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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import measure, report  # noqa: E402
from benchmarks.length import length_cost  # noqa: E402
from benchmarks.measure import MemoryMeter, StepClock, Timing, clocked_generate, run_timed  # noqa: E402
from benchmarks.profiling import profile_decode  # noqa: E402
from benchmarks.reference import build_method, reference_generate  # noqa: E402
from benchmarks.shapes import SHAPES, build_shape, image_px, make_samples, prompt_of_length  # noqa: E402
from mllm_refine.components import HeadFilter  # noqa: E402
from mllm_refine.data.sample import Sample  # noqa: E402
from mllm_refine.engine import Decoder, Parts  # noqa: E402
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
    p.add_argument("--repeats", type=int, default=3, help="timed rounds at batch 1 (after a warm-up)")
    p.add_argument("--batch-repeats", type=int, default=2, help="timed rounds at --batch")
    p.add_argument("--no-control", action="store_true", help=f"skip the {CONTROL} control run")
    p.add_argument(
        "--bracket", action="store_true",
        help="batch 1: vanilla also runs right after each recipe, and each run is compared with the vanilla runs beside it",
    )  # fmt: skip
    p.add_argument("--reference", choices=["both", "nocache", "cache", "none"], default="both")
    p.add_argument("--ref-tokens", type=int, default=8, help="new tokens per reference-style run")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed reference-style runs (after a warm-up)")
    p.add_argument("--memory-recipe", default="dualpd", help="recipe of the memory-versus-length runs")
    p.add_argument("--memory-lengths", default="1024,2048,4096", help="prompt lengths; empty skips")
    p.add_argument("--memory-tokens", type=int, default=2, help="new tokens per memory run")
    p.add_argument("--ref-memory-gb", type=float, default=8.0, help="skip reference runs whose attention maps exceed this")
    p.add_argument("--long-tokens", type=int, default=0, help="length runs: answer tokens at batch 1 (0 skips; e.g. 520)")
    p.add_argument("--long-rounds", type=int, default=3, help="length runs: interleaved rounds")
    p.add_argument("--profile-recipe", default="dualpd", help="recipe to profile; empty skips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--block", default="results", help="the Markdown block to fill: <!-- BLOCK:begin --> .. <!-- BLOCK:end -->")
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


@dataclasses.dataclass
class EagerRows(HeadFilter):
    """Control: changes nothing, but every block's current row goes through the probe's eager path.

    A probed decode step replaces that block's ``sdpa`` call by two small products (see
    ``engine.capture``), which on some kernels is faster or slower than ``sdpa`` itself. A recipe
    against this control prices what its parts add beyond that swap."""

    name = "eager_rows"
    noop_params = {}

    def active_layers(self) -> list[int]:
        return list(range(1, self.info.num_layers + 1))


CONTROL = report.CONTROL  # vanilla decoded through EagerRows


def discover(folder: Path, only: list[str], control: bool = True) -> list[tuple[str, Path | None]]:
    """``(name, path)`` of every recipe file, vanilla first (``None``: no vanilla.yaml, empty parts),
    then the ``vanilla_rows`` control (path ``None``)."""
    paths = {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    names = [n for n in paths if n != "vanilla" and (not only or n in only)]
    head = [("vanilla", paths.get("vanilla"))] + ([(CONTROL, None)] if control else [])
    return head + [(n, paths[n]) for n in names]


def make_decoder(model: Any, processor: Any, path: Path | None, tokens: int, name: str = "vanilla") -> Decoder:
    """A greedy decoder for the recipe's parts and decode settings (stop strings dropped)."""
    if path is None:
        parts = Parts(head_filters=[EagerRows()]) if name == CONTROL else None
        return Decoder(model, processor, parts, config=None)
    recipe = load_recipe(path)
    config = dataclasses.replace(recipe.decode, max_new_tokens=tokens, do_sample=False, stop=[])
    return Decoder(model, processor, recipe.parts, config)


def weights_mb(model: torch.nn.Module) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


class Runs:
    """Every timed run and memory run of one recipe at batch 1 and at the large batch."""

    def __init__(self, decoder: Decoder, big: str, device: torch.device) -> None:
        self.decoder = decoder
        self.device = device
        self.timing = {"1": Timing(), big: Timing(skip=1)}  # the large batch: first step left out
        self.meter = {"1": MemoryMeter(device), big: MemoryMeter(device)}
        self.bracket: list[float] = []  # batch 1, --bracket: mean step of the vanilla runs beside each run
        self.preds: dict[str, list] = {}

    def run(self, samples: list[Sample], tokens: int, memory: bool, into: Timing | None = None) -> None:
        """One ``generate`` of ``samples``: timed (into ``into`` if given), or (``memory``) under
        the memory meter only."""
        batch = str(len(samples))
        self.decoder.config.max_new_tokens = tokens

        def generate(clock: StepClock, generate_start: list[float]) -> Any:
            with clocked_generate(self.decoder.model, clock, generate_start):
                return self.decoder.generate(samples)

        timing, meter = (None, self.meter[batch]) if memory else (into or self.timing[batch], None)
        self.preds[batch] = run_timed(generate, self.device, timing, meter)

    def row(self, name: str, w_mb: float, batch_tokens: int) -> dict:
        runs = {}
        for batch, timing in self.timing.items():
            runs[batch] = timing.summary(int(batch))
            runs[batch]["peak_delta_mb"] = round(self.meter[batch].peak_mb, 1)
            runs[batch]["peak_mb"] = round(w_mb + self.meter[batch].peak_mb, 1)
        if self.bracket:
            runs["1"]["bracket_runs_ms"] = [round(1e3 * s, 3) for s in self.bracket]
        big = [b for b in runs if b != "1"][0]
        tokens, tokens_n = self.preds["1"][0].tokens, self.preds[big][0].tokens
        consistent = tokens_n == tokens[: len(tokens_n)] or len(tokens_n) < batch_tokens
        b1, bn = runs["1"], runs[big]
        print(
            f"  {name}: b1 {b1['per_token_ms']} ms/token, prefill {b1['prefill_ms']} ms; "
            f"b{big} {bn['per_token_ms']} ms/step; peak +{b1['peak_delta_mb']} / +{bn['peak_delta_mb']} MiB",
            flush=True,
        )
        return {"recipe": name, "runs": runs, "tokens_b1": tokens, "batch_agrees_b1": consistent}


def _first_line(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {first}"[:160]


class Bench:
    """All recipes side by side. Memory runs come first, on a heap where every large block is an
    ``mmap`` of its own; timing runs follow with the allocator's ordinary reuse (see ``measure``),
    in interleaved rounds: round r runs each recipe once before round r + 1 starts, so a machine
    that slows down over the run slows every recipe alike and the ratios stay fair."""

    def __init__(self, recipes: list[tuple[str, Path | None]], model: Any, processor: Any, samples: list[Sample], args: argparse.Namespace) -> None:
        self.args = args
        self.samples = samples
        self.big = str(args.batch)
        self.device = torch.device(args.device)
        self.order = [name for name, _ in recipes]
        self.runs: dict[str, Runs] = {}
        self.errors: dict[str, str] = {}
        for name, path in recipes:  # build and warm up (2 tokens at batch 1) every recipe first
            try:
                decoder = make_decoder(model, processor, path, 2, name)
                decoder.generate(samples[:1])
                self.runs[name] = Runs(decoder, self.big, self.device)
            except Exception as e:  # a recipe that cannot run on this model is reported, the others go on
                self.fail(name, "skipped", e)
        self.plan = [(samples[:1], args.max_new_tokens, args.repeats), (samples[: args.batch], args.batch_tokens, args.batch_repeats)]

    def fail(self, name: str, what: str, e: Exception) -> None:
        self.errors[name] = _first_line(e)
        self.runs.pop(name, None)
        print(f"  {name}: {what}: {self.errors[name]}", flush=True)

    def each(self, samples: list[Sample], tokens: int, memory: bool) -> None:
        for name, runs in list(self.runs.items()):
            try:
                runs.run(samples, tokens, memory)
            except Exception as e:
                self.fail(name, f"failed at batch {len(samples)}", e)

    def memory(self) -> None:
        for samples, tokens, _ in self.plan:
            self.each(samples, tokens, memory=True)
            print(f"  batch {len(samples)}: memory runs done", flush=True)

    def timing(self) -> None:
        if "vanilla" in self.runs:  # the first large batch pays the allocator's first touch, untimed
            self.runs["vanilla"].decoder.config.max_new_tokens = 2
            self.runs["vanilla"].decoder.generate(self.plan[1][0])
        for samples, tokens, rounds in self.plan:
            for r in range(rounds):
                if self.args.bracket and len(samples) == 1 and "vanilla" in self.runs:
                    self.bracketed(samples, tokens)
                else:
                    self.each(samples, tokens, memory=False)
                print(f"  batch {len(samples)}: round {r + 1}/{rounds} done", flush=True)

    def bracketed(self, samples: list[Sample], tokens: int) -> None:
        """One round in which vanilla runs first and again right after each recipe: a recipe's
        run is compared with the mean of the vanilla runs on either side of it, a second or less
        apart, where the round's first vanilla run may be many seconds away. Only vanilla's first
        run of the round enters its own times."""
        base, spare = self.runs["vanilla"], Timing()
        base.run(samples, tokens, memory=False)
        before = base.timing["1"].run_step_s[-1]
        for name, runs in list(self.runs.items()):
            if runs is base:
                continue
            try:
                runs.run(samples, tokens, memory=False)
            except Exception as e:
                self.fail(name, "failed at batch 1", e)
                continue
            base.run(samples, tokens, memory=False, into=spare)
            after = spare.run_step_s[-1]
            runs.bracket.append((before + after) / 2)
            before = after

    def rows(self, w_mb: float) -> list[dict]:
        return [
            {"recipe": name, "error": self.errors[name]} if name in self.errors
            else self.runs[name].row(name, w_mb, self.args.batch_tokens)
            for name in self.order
        ]  # fmt: skip


def reference_method(decoder: Decoder, sample: Sample, mode: str, tokens: int) -> Callable[[StepClock, list[float]], list[int]] | str:
    """A reference-style decode of ``sample`` at batch 1 (a run function for ``run_timed``), or
    why the recipe has none."""
    built = build_method(decoder.parts)
    if isinstance(built, str):
        return built
    method, filters = built
    config = dataclasses.replace(decoder.config, max_new_tokens=tokens)
    eos = decoder._eos_ids(decoder.generation_config())
    args = (decoder.model, decoder.adapter, sample, method, filters)
    reference_generate(*args, dataclasses.replace(config, max_new_tokens=1), eos, mode == "cache", [], [])  # warm-up

    def run(clock: StepClock, generate_start: list[float]) -> list[int]:
        new = reference_generate(*args, config, eos, mode == "cache", clock.stamps, generate_start)
        return [t for t in new if t not in eos]

    return run


def reference_memory(decoder: Decoder, sample: Sample, mode: str, tokens: int) -> tuple[float, list[int]] | str:
    """Peak memory delta (MiB) and tokens of one reference-style run, or why there is none."""
    run = reference_method(decoder, sample, mode, tokens)
    if isinstance(run, str):
        return run
    meter = MemoryMeter(torch.device(decoder.model.device))
    new = run_timed(run, meter.device, None, meter)
    return round(meter.peak_mb, 1), new


def reference_timing(decoder: Decoder, sample: Sample, mode: str, tokens: int, repeats: int) -> tuple[dict, list[int]] | str:
    """Timing summary and tokens of ``repeats`` reference-style runs at batch 1."""
    run = reference_method(decoder, sample, mode, tokens)
    if isinstance(run, str):
        return run
    timing, new = Timing(), []
    for _ in range(repeats):
        new = run_timed(run, torch.device(decoder.model.device), timing, None)
    return timing.summary(1), new


def agreement(ours: list[int], ref: list[int], ref_limit: int) -> tuple[bool, int]:
    """Same tokens over the reference's run (which is ``ref_limit`` tokens or ends at EOS)."""
    n = len(ref)
    same = ours[:n] == ref and (n == ref_limit or len(ours) == n)
    return same, n


def reference_modes(args: argparse.Namespace) -> list[str]:
    return {"both": ["nocache", "cache"], "none": []}.get(args.reference, [args.reference])


def reference_peaks(bench: Bench) -> dict[tuple[str, str], float | str]:
    """Memory phase: the peak of each recipe's reference-style run, per mode."""
    peaks: dict[tuple[str, str], float | str] = {}
    for name, runs in bench.runs.items():
        for mode in reference_modes(bench.args):
            got = reference_memory(runs.decoder, bench.samples[0], mode, bench.args.ref_tokens)
            peaks[(name, mode)] = got if isinstance(got, str) else got[0]
    return peaks


def bench_references(bench: Bench, rows: list[dict], peaks: dict, w_mb: float, prompt_tokens: int) -> list[dict]:
    """Timing phase: each recipe's reference-style runs, with their peaks from the memory phase."""
    out = []
    for row in rows:
        name = row["recipe"]
        if name not in bench.runs:
            continue
        for mode in reference_modes(bench.args):
            got = reference_timing(bench.runs[name].decoder, bench.samples[0], mode, bench.args.ref_tokens, bench.args.ref_repeats)
            if isinstance(got, str):
                if name == "vanilla":
                    out.append({"recipe": name, "mode": mode, "error": got})
                continue
            summary, tokens = got
            same, n = agreement(row["tokens_b1"], tokens, bench.args.ref_tokens)
            summary["peak_delta_mb"] = peaks[(name, mode)]
            summary["peak_mb"] = round(w_mb + summary["peak_delta_mb"], 1)
            out.append({"recipe": name, "mode": mode, **summary, "prompt_tokens": prompt_tokens, "agree": same,
                        "compared": n, "tokens": tokens})  # fmt: skip
            print(f"  {name} reference ({mode}): {summary['per_token_ms']} ms/token, agree={same} over {n}", flush=True)
    return out


def memory_scaling(model: Any, processor: Any, args: argparse.Namespace) -> list[dict]:
    """Peak memory of ours and the reference style (KV cache kept) at growing prompt lengths."""
    lengths = [int(x) for x in args.memory_lengths.split(",") if x.strip()]
    path = args.recipes_dir / f"{args.memory_recipe}.yaml"
    if not lengths or not path.exists():
        return []
    decoder = make_decoder(model, processor, path, args.memory_tokens)
    rows = []
    for length in lengths:
        sample, tokens = prompt_of_length(decoder.adapter, length, image_px(processor), args.seed)
        decoder.config.max_new_tokens = 2
        decoder.generate([sample])  # warm-up
        runs = Runs(decoder, "1", torch.device(args.device))
        runs.run([sample], args.memory_tokens, memory=True)
        row = {"recipe": args.memory_recipe, "target_tokens": length, "prompt_tokens": tokens,
               "ours_delta_mb": round(runs.meter["1"].peak_mb, 1)}  # fmt: skip
        info = decoder.adapter.info()
        maps_gb = info.num_layers * info.num_heads * tokens**2 * model.dtype.itemsize / 2**30  # every (H, T, T) map
        got = (
            reference_memory(decoder, sample, "cache", args.memory_tokens)
            if maps_gb <= args.ref_memory_gb
            else f"its attention maps alone take {maps_gb:.1f} GiB (--ref-memory-gb {args.ref_memory_gb})"
        )
        if isinstance(got, str):
            row["reference_skipped"] = got
        else:
            row["reference_delta_mb"], ref_tokens = got
            row["agree"] = agreement(runs.preds["1"][0].tokens, ref_tokens, args.memory_tokens)[0]
        print(f"  memory {tokens} tokens: ours +{row['ours_delta_mb']} MiB, reference +{row.get('reference_delta_mb')} MiB", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        result = json.loads(args.json.read_text())
        report.add_ratios(result)
        report.write(result, args.json, args.markdown, args.block)
        return 0
    torch.set_num_threads(args.threads)
    exact = measure.set_allocator(exact=True)  # before the model: the memory phase needs a clean heap
    device = torch.device(args.device)
    model, processor, model_name, dtype = load_model(args)
    w_mb = weights_mb(model)
    samples = make_samples(args.batch, image_px=image_px(processor), seed=args.seed)
    recipes = discover(args.recipes_dir, args.recipe, control=not args.no_control)
    print(f"{model_name} ({dtype}, {w_mb:.0f} MiB), {len(recipes)} recipes, {args.threads} threads", flush=True)
    result: dict[str, Any] = {
        "command": "python benchmarks/decode_cost.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": measure.machine(args.threads, device),
    }
    bench = Bench(recipes, model, processor, samples, args)
    bench.memory()
    peaks = reference_peaks(bench)
    result["memory_scaling"] = memory_scaling(model, processor, args)
    measure.set_allocator(exact=False)
    bench.timing()
    result["recipes"] = bench.rows(w_mb)
    if args.long_tokens:
        decoders = {name: runs.decoder for name, runs in bench.runs.items()}
        result["length"] = length_cost(decoders, samples[0], args.long_tokens, args.long_rounds)
    prompt_tokens = image_tokens = 0
    if bench.runs:
        ids = next(iter(bench.runs.values())).decoder.adapter.prepare(samples[:1])["input_ids"]
        prompt_tokens, image_tokens = ids.shape[1], int(next(iter(bench.runs.values())).decoder.adapter.image_keys(ids).sum())
    result["reference"] = bench_references(bench, result["recipes"], peaks, w_mb, prompt_tokens)
    result["settings"] = {
        "model": model_name, "dtype": dtype, "device": str(device), "prompt_tokens": prompt_tokens,
        "image_tokens": image_tokens, "max_new_tokens": args.max_new_tokens, "batch": args.batch,
        "batch_tokens": args.batch_tokens, "repeats": args.repeats, "batch_repeats": args.batch_repeats, "bracket": args.bracket,
        "ref_tokens": args.ref_tokens, "long_tokens": args.long_tokens, "ref_repeats": args.ref_repeats, "memory_tokens": args.memory_tokens,
        "weights_mb": round(w_mb, 1),
        "memory_method": "torch.cuda.max_memory_allocated, one separate run" if device.type == "cuda" else
        f"resident-set high-water mark above the start, one separate run (mmap-backed allocations: {exact}); peak = weights + delta",
    }  # fmt: skip
    profile_path = args.recipes_dir / f"{args.profile_recipe}.yaml"
    if args.profile_recipe and profile_path.exists():
        decoder = make_decoder(model, processor, profile_path, args.max_new_tokens)
        result["profile"] = profile_decode(decoder, samples[:1], args.profile_recipe)
    report.add_ratios(result)
    report.write(result, args.json, args.markdown, args.block)
    print("\n".join(report.targets(result)))
    print(f"wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
