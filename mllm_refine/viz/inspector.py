"""``mllm-refine inspect``: one sample, vanilla and the recipe, every plot, its JSON and a page.

Layout of the output folder::

    index.html                      the self-contained page
    summary.json                    question, answers, choices, and where every file is
    <side>/step_NNN/<kind>.png      side: vanilla | recipe; kind: attention, shift, heads, lens, crop
    <side>/step_NNN/<kind>.json     the numbers that plot shows
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from PIL import Image

from mllm_refine.data.sample import Sample
from mllm_refine.engine import Parts
from mllm_refine.recipes.loader import Recipe
from mllm_refine.viz import plots
from mllm_refine.viz.capture import Trace, diagnostic_decoder, trace
from mllm_refine.viz.numbers import step_numbers
from mllm_refine.viz.report import render


def load_sample(recipe: Recipe, image: str | None, question: str | None, sample_id: str | None) -> Sample:
    """The sample to inspect: ``--image`` and ``--question``, or ``--id`` of the recipe's dataset."""
    if sample_id is not None:
        if image is not None:
            raise ValueError("inspect: give either --id or --image, not both")
        from mllm_refine.run import build_dataset

        dataset = build_dataset(recipe.data, recipe.source)
        first = None
        for i in range(len(dataset)):
            # Datasets without ``sample_id`` are read sample by sample, up to the match.
            sid = str(dataset.sample_id(i)) if hasattr(dataset, "sample_id") else None
            if sid is None or sid == sample_id:
                sample = dataset[i]
                if str(sample.id) == sample_id:
                    return Sample(sample.id, question or sample.question, sample.images, sample.answers, sample.meta)
                sid = str(sample.id)
            first = first or sid
        hint = f" (ids look like {first!r})" if first else ""
        name = recipe.data.get("name", "manifest")
        raise ValueError(f"--id: no sample {sample_id!r} among the {len(dataset)} of data.name={name}{hint}")
    if image is None or question is None:
        raise ValueError("inspect: give --image PATH and --question TEXT, or --id ID of a sample of the recipe's data")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"--image: no such file: {path}")
    with Image.open(path) as img:
        picture = img.convert("RGB")
    return Sample(id=path.stem, question=question, images=[picture])


def _jsonable(value: Any) -> Any:
    """Choices and meta as JSON (tensors and arrays as lists, images as their size)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Image.Image):
        return {"image": list(value.size)}
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_side(t: Trace, picture: Image.Image, output: Path) -> dict[str, Any]:
    """Every step's plots and numbers of one side; its entry of summary.json."""
    steps = []
    for rec in t.steps:
        folder = output / t.side / f"step_{rec.step:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        numbers = step_numbers(t, rec)
        tag = f"{t.side}, token {rec.step + 1} ({t.token_text.get(rec.token, '')!r})"
        pngs = {
            "attention": plots.plot_attention(numbers["attention"], t.view, folder / "attention.png",
                                              f"head-mean image attention per block (each map to its own max); {tag}"),
            "shift": plots.plot_shift(numbers["shift"], folder / "shift.png", f"attention shift; {tag}"),
            "heads": plots.plot_heads(numbers["heads"], folder / "heads.png",
                                      f"head scores (pre-softmax row norm, before filters); {tag}"),
            "lens": plots.plot_lens(numbers["lens"], folder / "lens.png", f"logit lens; {tag}"),
            "crop": plots.plot_crop(numbers["crop"], picture, folder / "crop.png", f"crop; {t.side}"),
        }  # fmt: skip
        for kind, data in numbers.items():
            (folder / f"{kind}.json").write_text(json.dumps(data, indent=1))
        steps.append(
            {
                "step": rec.step,
                "token": rec.token,
                "token_text": t.token_text.get(rec.token, ""),
                "json": {k: (folder / f"{k}.json").relative_to(output).as_posix() for k in numbers},
                "png": {k: p.relative_to(output).as_posix() for k, p in pngs.items() if p is not None},
            }
        )
    p = t.prediction
    return {
        "prediction": p.prediction,
        "tokens": p.tokens,
        "choices": _jsonable(p.choices),
        "meta": _jsonable(p.meta),
        "fallbacks": p.fallbacks,
        "steps": steps,
    }


def inspect_recipe(
    recipe: Recipe,
    sample: Sample,
    output: str | Path,
    all_tokens: bool = False,
    model: tuple[Any, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``sample`` through vanilla and ``recipe``; write plots, JSON and ``index.html``.

    ``model`` is an already loaded ``(model, processor)``; by default the recipe's is loaded.
    Returns the page's path.
    """
    plots.require_matplotlib()
    if recipe.raw.get("sweep"):
        raise ValueError(f"inspect: {recipe.source} is a sweep; inspect one stack (a recipe without sweep:)")
    if not sample.images:
        raise ValueError("inspect: the sample has no image")
    if model is None:
        from mllm_refine.models import load_model

        model = load_model(**recipe.model)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    traces = []
    for side, parts in (("vanilla", Parts()), ("recipe", recipe.parts)):
        log(f"inspect: {side} pass")
        decoder = diagnostic_decoder(model[0], model[1], parts, recipe.decode)
        with torch.no_grad():
            traces.append(trace(decoder, sample, side, all_tokens))
    picture = sample.images[0].convert("RGB")
    summary = {
        "recipe": recipe.name,
        "recipe_yaml": yaml.safe_dump(recipe.raw, sort_keys=False),
        "model": recipe.model.get("path"),
        "sample_id": sample.id,
        "question": sample.question,
        "answers": sample.answers,
        "all_tokens": all_tokens,
        "sides": {t.side: write_side(t, picture, out) for t in traces},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    page = out / "index.html"
    page.write_text(render(summary, out, picture), encoding="utf-8")
    return page
