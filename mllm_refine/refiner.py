"""Refiner: a recipe applied to a model and processor the caller loaded, for use from Python.

    refiner = Refiner(model, processor, "dualpd", max_new_tokens=8)
    out = refiner.generate(images=image, text="What shape is in the image?")
    out[0].text, out[0].choices["layer"]

The model is borrowed, not changed: the recipe's attention function, hooks and captures are
installed only while ``generate`` runs and removed after it, the tokenizer's padding side is put
back, and no weight, config or generation config is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image
from torch import nn

from mllm_refine.data.manifest import MAX_PIXELS, open_image
from mllm_refine.data.sample import Sample
from mllm_refine.engine.config import DecodeConfig
from mllm_refine.engine.decoder import Prediction
from mllm_refine.recipes.binding import decoder_for
from mllm_refine.recipes.loader import Recipe, load_recipe
from mllm_refine.recipes.schema import RecipeError, build_dataclass

DECODE_KEYS = tuple(f.name for f in dataclasses.fields(DecodeConfig))


def override_texts(overrides: Mapping[str, Any]) -> list[str]:
    """Keyword overrides as ``key=value`` texts: ``__`` separates levels
    (``head_filters__0__ratio=0.2``) and a decode setting may be named alone (``max_new_tokens=8``)."""
    texts = []
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if dotted in DECODE_KEYS:
            dotted = f"decode.{dotted}"
        try:
            text = json.dumps(value)  # JSON is YAML: the loader reads it back as the same value
        except TypeError as e:
            raise RecipeError(f"override {key}: {type(value).__name__} is not a recipe value (numbers, text, lists, mappings)") from e
        texts.append(f"{dotted}={text}")
    return texts


def images_of(value: Any, sid: str) -> list[Image.Image]:
    """One prompt's images (none, one, or a list of them) as PIL images; a path is read as a
    manifest's image is (``open_image``: RGB, pixel limit), errors naming the sample ``sid``."""
    items = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, (str, Path)):
            item = open_image(Path(item), str(item), sid, MAX_PIXELS)
        elif not isinstance(item, Image.Image):
            raise TypeError(f"sample {sid!r}: image: expected a PIL image or an image path, got {type(item).__name__}")
        out.append(item)
    return out


def samples_from(
    text: str | Sequence[str], images: Any = None, ids: Sequence[str] | None = None
) -> list[Sample]:
    """Samples from processor-style arguments: one question and its image(s), or a list of
    questions and a list with one entry (an image, a list of images or None) per question."""
    if isinstance(text, str):
        texts, per_prompt = [text], [images]
    else:
        texts = list(text)
        if images is None:
            per_prompt = [None] * len(texts)
        elif not isinstance(images, (list, tuple)) or len(images) != len(texts):
            raise ValueError(f"images: expected a list with one entry per text ({len(texts)}), got {type(images).__name__}"
                             + (f" of {len(images)}" if isinstance(images, (list, tuple)) else ""))
        else:
            per_prompt = list(images)
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(texts):
        raise ValueError(f"ids: expected one id per text ({len(texts)}), got {len(ids)}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text[{i}]: expected a string, got {type(t).__name__}")
    return [Sample(id=i, question=t, images=images_of(im, i)) for i, t, im in zip(ids, texts, per_prompt)]


def _batch(call: str, text: Any, images: Any, samples: Sequence[Sample] | None, ids: Sequence[str] | None) -> list[Sample]:
    """The samples a call is about: given as ``samples``, or built from ``text`` and ``images``."""
    if (samples is None) == (text is None):
        raise TypeError(f"{call}: give text (with images) or samples, not both")
    return list(samples) if samples is not None else samples_from(text, images, ids)


class Refiner:
    """A recipe's parts on a model and processor loaded by the caller.

    ``recipe`` is a shipped or registered recipe name, a recipe file, or a loaded ``Recipe``; its
    ``model`` and ``data`` blocks are not used. ``overrides`` change any recipe key, as
    ``key=value`` does on the command line (see ``override_texts``)."""

    def __init__(self, model: nn.Module, processor: Any, recipe: str | Path | Recipe = "vanilla", **overrides: Any) -> None:
        if isinstance(recipe, Recipe):
            if overrides:
                raise TypeError("Refiner: overrides apply to a recipe name or file, not to a loaded Recipe")
            self.recipe = recipe
        else:
            self.recipe = load_recipe(recipe, override_texts(overrides))
        self.decoder = decoder_for(self.recipe, model, processor)  # a setting the model cannot take fails here

    @classmethod
    def from_recipe(cls, recipe: str | Path = "vanilla", **overrides: Any) -> "Refiner":
        """Load the recipe's own model (``model.path``, ``dtype``, ``device``) and apply the recipe."""
        from mllm_refine.models import load_model

        loaded = load_recipe(recipe, override_texts(overrides))
        model, processor = load_model(**loaded.model)
        return cls(model, processor, loaded)

    @property
    def model(self) -> nn.Module:
        return self.decoder.model

    @property
    def processor(self) -> Any:
        return self.decoder.processor

    @property
    def parts(self) -> list[str]:
        """``kind:name`` of each part, in the order they act."""
        return [f"{p.kind}:{p.name}" for p in self.recipe.parts.components()]

    def generate(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        *,
        samples: Sequence[Sample] | None = None,
        ids: Sequence[str] | None = None,
        **decode: Any,
    ) -> list[Prediction]:
        """Answer ``text`` about ``images`` (as a processor takes them), or ``samples``; one
        ``Prediction`` per question, in order: ``.text``, ``.tokens`` and ``.choices`` (what each
        part chose, e.g. ``choices["layer"]`` per answer token). ``decode`` overrides decode
        settings for this call only (``max_new_tokens``, ``do_sample``, ``stop``, ``seed``, ...).
        A sample's id seeds its sampling stream, so the same id draws the same answer."""
        batch = _batch("generate", text, images, samples, ids)
        config = self._config(decode)
        base, self.decoder.config = self.decoder.config, config
        try:
            n = config.batch_size
            return [p for i in range(0, len(batch), n) for p in self.decoder.generate(batch[i : i + n])]
        finally:
            self.decoder.config = base

    def loglikelihood(
        self,
        continuations: Sequence[str],
        images: Any = None,
        text: str | Sequence[str] | None = None,
        *,
        samples: Sequence[Sample] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[tuple[float, bool]]:
        """Per question, the summed log-probability of its continuation (the answer text) under
        the recipe's refined logits, teacher-forced through the same parts, and whether greedy
        decoding would give it: lm-eval's ``loglikelihood``."""
        batch = _batch("loglikelihood", text, images, samples, ids)
        if isinstance(continuations, str) or len(continuations) != len(batch):
            raise ValueError(f"continuations: expected a list with one text per question ({len(batch)})")
        n = self.decoder.config.batch_size
        return [
            r
            for i in range(0, len(batch), n)
            for r in self.decoder.loglikelihood(batch[i : i + n], list(continuations[i : i + n]))
        ]

    def _config(self, decode: Mapping[str, Any]) -> DecodeConfig:
        """The recipe's decode settings with this call's ``decode`` over them, type-checked."""
        config = build_dataclass(DecodeConfig, {**dataclasses.asdict(self.recipe.decode), **decode}, "generate")
        try:
            config.validate()
        except ValueError as e:
            raise RecipeError(f"generate: {e}") from e
        return config

    def __repr__(self) -> str:
        return f"Refiner({self.recipe.name!r}, parts=[{', '.join(self.parts)}], model={type(self.model).__name__})"


__all__ = ["Refiner", "images_of", "override_texts", "samples_from"]
