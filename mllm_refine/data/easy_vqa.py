"""easy-VQA (the ``easy-vqa`` PyPI package) as datasets of the project.

``EasyVQA``: the original questions (train 38,575 / test 9,673), each typed by its answer as
``yes_no``, ``colour`` or ``shape``.

``EasyVQAPope``: a POPE-style probe built from the same images. Every easy-VQA image holds one
shape of one colour; both are recovered from the image's own questions and answers
(``image_labels``). Each image whose shape and colour are both known gives four yes/no
questions in the dataset's own wording: its shape and its colour (answer "yes"), and one absent
shape and one absent colour (answer "no"), so every subset is exactly balanced. As in POPE, the
subsets differ only in how the absent object is chosen:

- ``random``: uniformly among the absent ones (seeded by split and image id);
- ``popular``: the absent one most frequent over the split's images;
- ``adversarial``: the absent one that co-occurs most often with the image's other attribute
  (for a red circle: the shape most often drawn in red, the colour most often used for circles).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from mllm_refine.data.sample import Sample

COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
QUESTION_TYPES = ("yes_no", "colour", "shape")
SPLITS = ("train", "test")
POPE_SUBSETS = ("random", "popular", "adversarial")


def answer_type(answer: str) -> str:
    """``yes_no``, ``colour`` or ``shape``, from the gold answer."""
    if answer in ("yes", "no"):
        return "yes_no"
    if answer in COLOURS:
        return "colour"
    if answer in SHAPES:
        return "shape"
    raise ValueError(f"not an easy-VQA answer: {answer!r}")


def _data_dir() -> Path:
    try:
        import easy_vqa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("easy-VQA needs the `easy-vqa` package: pip install easy-vqa") from e
    return Path(easy_vqa.__file__).resolve().parent / "data"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"easy-VQA split must be one of {SPLITS}, got {split!r}")


@lru_cache(maxsize=None)
def questions(split: str) -> tuple[tuple[str, str, int], ...]:
    """``(question, answer, image_id)`` in the file's order."""
    _check_split(split)
    rows = json.loads((_data_dir() / split / "questions.json").read_text())
    return tuple((str(q), str(a), int(i)) for q, a, i in rows)


def image_path(split: str, image_id: int) -> Path:
    return _data_dir() / split / "images" / f"{image_id}.png"


def load_image(split: str, image_id: int) -> Image.Image:
    with Image.open(image_path(split, image_id)) as im:
        return im.convert("RGB")


@lru_cache(maxsize=None)
def image_labels(split: str) -> dict[int, dict[str, str]]:
    """Per image id, the ``shape`` and ``colour`` its questions reveal (a key is missing when
    the questions do not determine it). Yes/no answers count both ways: "is there not a red
    shape?" -> "no" means red is present; ruling out all but one option settles it too."""
    known: dict[int, dict[str, str]] = {}
    ruled_out: dict[int, set[str]] = {}
    for q, a, i in questions(split):
        labels, out = known.setdefault(i, {}), ruled_out.setdefault(i, set())
        words = set(re.findall(r"[a-z]+", q))
        kind = answer_type(a)
        if kind == "colour":
            labels["colour"] = a
            labels.update([("shape", s) for s in SHAPES if s in words][-1:])  # the question's shape word, if any
        elif kind == "shape":
            labels["shape"] = a
            labels.update([("colour", c) for c in COLOURS if c in words][-1:])
        else:
            present = (a == "yes") != bool(words & {"not", "no"})
            for key, names in (("colour", COLOURS), ("shape", SHAPES)):
                for name in names:
                    if name in words:
                        if present:
                            labels[key] = name
                        else:
                            out.add(name)
    for i, labels in known.items():
        for key, names in (("colour", COLOURS), ("shape", SHAPES)):
            left = [n for n in names if n not in ruled_out[i]]
            if key not in labels and len(left) == 1:
                labels[key] = left[0]
    return known


class EasyVQA:
    """The easy-VQA questions of one split; ``question_types`` keeps only those answer types."""

    default_metric = "exact_match"

    def __init__(self, split: str = "test", limit: int | None = None, question_types: list[str] | None = None) -> None:
        _check_split(split)
        if question_types is not None:
            bad = [t for t in question_types if t not in QUESTION_TYPES]
            if bad:
                raise ValueError(f"unknown question types {bad}; known: {QUESTION_TYPES}")
        self.split = split
        rows = [
            (n, q, a, i)
            for n, (q, a, i) in enumerate(questions(split))
            if question_types is None or answer_type(a) in question_types
        ]
        self.rows = rows[:limit] if limit is not None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        n, q, a, image_id = self.rows[index]
        return Sample(
            id=f"easyvqa-{self.split}-{n:06d}",
            question=q,
            images=[load_image(self.split, image_id)],
            answers=[a],
            meta={"type": answer_type(a), "image_id": image_id, "split": self.split},
        )


def _pope_rows(split: str, subset: str) -> list[dict[str, Any]]:
    labels = {i: d for i, d in sorted(image_labels(split).items()) if "shape" in d and "colour" in d}
    freq = {k: Counter(d[k] for d in labels.values()) for k in ("shape", "colour")}
    pairs = Counter((d["shape"], d["colour"]) for d in labels.values())
    rows: list[dict[str, Any]] = []
    for i, d in labels.items():
        rng = random.Random(f"{split}-{i}")
        for kind, names, other in (("shape", SHAPES, "colour"), ("colour", COLOURS, "shape")):
            absent = [n for n in names if n != d[kind]]
            if subset == "random":
                negative = rng.choice(absent)
            elif subset == "popular":
                negative = max(absent, key=lambda n: freq[kind][n])  # ties: first in names order
            else:

                def together(n: str, kind: str = kind, other: str = other, d: dict = d) -> int:
                    pair = {kind: n, other: d[other]}
                    return pairs[(pair["shape"], pair["colour"])]

                negative = max(absent, key=lambda n: (together(n), freq[kind][n]))
            for name, answer in ((d[kind], "yes"), (negative, "no")):
                text = f"is there a {name} in the image?" if kind == "shape" else f"is there a {name} shape in the image?"
                rows.append({"question": text, "answer": answer, "image_id": i, "kind": kind, "object": name})
    return rows


class EasyVQAPope:
    """POPE-style yes/no object probing on easy-VQA images (see the module docstring)."""

    default_metric = "pope"

    def __init__(self, split: str = "test", limit: int | None = None, subset: str = "random") -> None:
        _check_split(split)
        if subset not in POPE_SUBSETS:
            raise ValueError(f"POPE subset must be one of {POPE_SUBSETS}, got {subset!r}")
        self.split, self.subset = split, subset
        rows = _pope_rows(split, subset)
        self.rows = rows[:limit] if limit is not None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        return Sample(
            id=f"easyvqa-pope-{self.subset}-{self.split}-{index:06d}",
            question=row["question"],
            images=[load_image(self.split, row["image_id"])],
            answers=[row["answer"]],
            meta={
                "type": "yes_no",
                "pope_subset": self.subset,
                "kind": row["kind"],
                "object": row["object"],
                "image_id": row["image_id"],
                "split": self.split,
            },
        )
