"""Run a recipe over a dataset: predictions as JSONL (written as they finish), then scores.

A rerun into the same folder resumes: ids already in ``predictions.jsonl`` are skipped, and a
torn last line (a run killed mid-write) is dropped first. A sample that fails gets a record
with ``error`` set to one line; the job goes on.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from mllm_refine.data.sample import Sample
from mllm_refine.engine.decoder import Decoder, Prediction
from mllm_refine.models import check_model_path, load_model
from mllm_refine.plugin_manager import get_registry
from mllm_refine.recipes.loader import Recipe
from mllm_refine.recipes.schema import RecipeError, suggest

PREDICTIONS = "predictions.jsonl"


@dataclass
class RunSummary:
    output: str
    total: int
    written: int
    skipped: int
    failed: int
    fallbacks: int
    score: float | None
    metric: str
    seconds: float
    tokens_per_second: float


def build_dataset(data: dict[str, Any], source: str = "recipe") -> Any:
    params = dict(data)
    name = params.pop("name", "manifest")
    registry = get_registry()
    names = registry.names("dataset")
    if name not in names:
        raise RecipeError(f"{source}: data.name: unknown dataset {name!r}{suggest(name, names)}; choices: {', '.join(names)}")
    factory = registry.get("dataset", name).obj
    accepted = inspect.signature(factory).parameters
    for key in params:
        if key not in accepted:
            raise RecipeError(f"{source}: data.{key}: unknown parameter of dataset {name!r}{suggest(key, list(accepted))}")
    return factory(**params)


def read_done(path: Path) -> set[str]:
    """Ids already written; a torn last line is cut off the file."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    done = set()
    for line in data[:keep].splitlines():
        if line.strip():
            done.add(json.loads(line)["id"])
    return done


def _record(pred: Prediction, recipe: str) -> dict[str, Any]:
    out = asdict(pred)
    out["recipe"] = recipe
    out["error"] = None
    return out


def _error(sample_id: str, question: str | None, message: str, recipe: str) -> dict[str, Any]:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    return {"id": sample_id, "question": question, "prediction": None, "recipe": recipe, "error": first}


def _batches(indices: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(indices), size):
        yield indices[i : i + size]


def _sample_id(dataset: Any, index: int) -> str:
    return dataset.sample_id(index) if hasattr(dataset, "sample_id") else str(index)


def run_recipe(recipe: Recipe, output: str | Path, fail_fast: bool = False, log=print) -> RunSummary:
    """Run ``recipe``, append to ``output/predictions.jsonl`` and write ``scores.json``."""
    check_model_path(recipe.model["path"])
    dataset = build_dataset(recipe.data, recipe.source)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / PREDICTIONS
    done = read_done(pred_path)
    todo = [i for i in range(len(dataset)) if _sample_id(dataset, i) not in done]
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
    log(f"{recipe.name}: {len(dataset)} samples, {len(done)} already done, {len(todo)} to run -> {out}")
    start, tokens, failed, fallbacks = time.perf_counter(), 0, 0, 0
    if todo:
        model, processor = load_model(**recipe.model)
        decoder = Decoder(model, processor, recipe.parts, recipe.decode)
        with pred_path.open("a", encoding="utf-8") as f:

            def write(rec: dict[str, Any]) -> None:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

            for batch in _batches(todo, recipe.decode.batch_size):
                samples: list[Sample] = []
                for i in batch:
                    try:
                        samples.append(dataset[i])
                    except Exception as e:
                        if fail_fast:
                            raise
                        failed += 1
                        write(_error(_sample_id(dataset, i), None, f"{type(e).__name__}: {e}", recipe.name))
                for rec in _decode(decoder, samples, recipe.name, fail_fast):
                    failed += rec["error"] is not None
                    fallbacks += rec.get("fallbacks") or 0
                    tokens += len(rec.get("tokens") or [])
                    write(rec)
                f.flush()
                os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    score = write_scores(out, recipe.metric)
    summary = RunSummary(
        output=str(out), total=len(dataset), written=len(todo), skipped=len(done), failed=failed,
        fallbacks=fallbacks, score=score, metric=recipe.metric, seconds=round(seconds, 3),
        tokens_per_second=round(tokens / seconds, 2) if seconds > 0 else 0.0,
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def _decode(decoder: Decoder, samples: list[Sample], recipe: str, fail_fast: bool) -> list[dict[str, Any]]:
    """Records for a batch; a failing batch is retried one sample at a time."""
    if not samples:
        return []
    try:
        return [_record(p, recipe) for p in decoder.generate(samples)]
    except Exception as e:
        if fail_fast:
            raise
        if len(samples) == 1:
            s = samples[0]
            return [_error(s.id, s.question, f"{type(e).__name__}: {e}", recipe)]
        return [rec for s in samples for rec in _decode(decoder, [s], recipe, fail_fast)]


def write_scores(out: Path, metric: str) -> float | None:
    """Score every record with references in ``predictions.jsonl``; write ``scores.json``."""
    preds, refs, errors = [], [], 0
    with (out / PREDICTIONS).open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("error"):
                errors += 1
            elif rec.get("answers"):
                preds.append(rec["prediction"] or "")
                refs.append(rec["answers"])
    if not preds:
        return None
    m = get_registry().get("metric", metric).obj()
    m.update(preds, refs)
    score = float(m.compute())
    scores = {"metric": metric, "score": score, "scored": len(preds), "errors": errors}
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return score


