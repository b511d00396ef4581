"""The main job end to end against a plain transformers loop over the same questions.

    python benchmarks/end_to_end.py --limit 400 --rounds 3 --threads 2

Ours is ``mllm-refine run``'s own path (``run_recipe``: the Lightning predict loop, the recipe's
parts, shards, the merge and the scores) on a fresh output folder each round. The plain loop is
what a user writes by hand with transformers alone: the processor's chat template, left padding,
``model.generate`` with greedy decoding and the recipe's ``max_new_tokens``, ``batch_decode``.
Both share one loaded model, so neither pays for loading; each round runs both, the plain loop
first in every other round, so a machine that drifts slows both sides of a round's ratio and an
order effect cancels. Prints the wall time of each, the
median ratio over rounds, and how often the two answers agree; ``--json`` keeps the record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.measure import machine  # noqa: E402
from mllm_refine.lightning.data import build_dataset  # noqa: E402
from mllm_refine.models import load_model  # noqa: E402
from mllm_refine.recipes import load_recipe  # noqa: E402
from mllm_refine.run import run_recipe  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "vanilla.yaml")
    p.add_argument("--limit", type=int, default=400, help="first questions of the recipe's data")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, set explicitly")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def plain_loop(model: Any, processor: Any, samples: list[Any], batch_size: int, max_new_tokens: int) -> list[str]:
    """Answers from transformers alone: chat template, left padding, greedy ``generate``."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [*({"type": "image"} for _ in s.images), {"type": "text", "text": s.question}]}],
                add_generation_prompt=True,
            )
            for s in batch
        ]
        inputs = processor(images=[list(s.images) for s in batch], text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs.to(model.device), do_sample=False, max_new_tokens=max_new_tokens)
        new = out[:, inputs["input_ids"].shape[1] :]  # (B, N)
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def timed_plain(model: Any, processor: Any, samples: list[Any], batch_size: int, max_new_tokens: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    answers = plain_loop(model, processor, samples, batch_size, max_new_tokens)
    return time.perf_counter() - start, answers


def ours(recipe: Any, models: dict[str, Any]) -> tuple[float, list[str]]:
    """Seconds of one ``run_recipe`` into a fresh folder, and its answers in data order."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_recipe(recipe, folder, log=lambda _: None, models=models)
        seconds = time.perf_counter() - start
        lines = (Path(folder) / "predictions.jsonl").read_text().splitlines()
    return seconds, [json.loads(line)["prediction"] for line in lines]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, [f"data.limit={args.limit}"])
    samples = list(build_dataset(recipe.data))
    model, processor = load_model(**recipe.model)
    models = {json.dumps(recipe.model, sort_keys=True): (model, processor)}
    decode = recipe.decode
    ours(recipe, models)  # warm-up: first-touch allocations, the trainer's imports
    rows = []
    for r in range(args.rounds):
        if r % 2:  # odd rounds run the plain loop first: an order effect cancels over the rounds
            t_plain, a_plain = timed_plain(model, processor, samples, decode.batch_size, decode.max_new_tokens)
            t_ours, a_ours = ours(recipe, models)
        else:
            t_ours, a_ours = ours(recipe, models)
            t_plain, a_plain = timed_plain(model, processor, samples, decode.batch_size, decode.max_new_tokens)
        agree = sum(a == b for a, b in zip(a_ours, a_plain, strict=True)) / len(samples)
        rows.append({"round": r + 1, "ours_s": round(t_ours, 2), "plain_s": round(t_plain, 2), "agree": round(agree, 4)})
        print(
            f"round {r + 1}: ours {t_ours:.1f} s, plain loop {t_plain:.1f} s, ratio {t_ours / t_plain:.3f}, answers agree {agree:.1%}",
            flush=True,
        )
    result = {
        "command": "python benchmarks/end_to_end.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(args.threads, model.device),
        "recipe": recipe.name, "questions": len(samples), "batch_size": decode.batch_size,
        "max_new_tokens": decode.max_new_tokens, "rounds": rows,
        "ratio": round(statistics.median(r["ours_s"] / r["plain_s"] for r in rows), 3),
    }  # fmt: skip
    print(
        f"{recipe.name}, {len(samples)} questions at batch {decode.batch_size}: ours / plain loop = {result['ratio']:.3f} (median of {args.rounds} rounds)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
