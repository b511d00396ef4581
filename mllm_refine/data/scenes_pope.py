"""POPE on easy-VQA scenes: "is there a red shape in the image?" / "is there a triangle in the image?".

Each scene gives one present colour and one absent colour, and one present and one absent shape
when some shape is absent (a scene holding all three shapes gives colour questions only), so every
subset is exactly balanced. The present attribute is one held by a single object where the scene
has one (its box is the target), else the one of the largest holder. As in POPE on COCO, the
subsets differ only in how the absent attribute is chosen, from statistics of the train scenes
(the default 8,000, same ``seed``), whose co-occurrence prior is described in ``scenes.py``:

- ``random``: uniformly among the absent ones;
- ``popular``: the absent one found in the most train scenes;
- ``adversarial``: the absent one that shares the most train scenes with the scene's present
  colours and shapes (summed over them); ties go to the more popular, then to easy-VQA's order.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache
from typing import Any

from mllm_refine.data.easy_vqa import COLOURS, POPE_SUBSETS, SHAPES
from mllm_refine.data.sample import Sample
from mllm_refine.data.scenes import (
    CANVAS,
    PRIOR,
    SCENES,
    Scene,
    check_params,
    draw_objects,
    make_scene,
    rendered,
    scene_meta,
    scene_rng,
    target_meta,
)


@lru_cache(maxsize=4)
def train_statistics(seed: int = 0) -> tuple[Counter, Counter]:
    """Over the default train scenes: scenes holding each attribute, and each pair of attributes."""
    single: Counter = Counter()
    pairs: Counter = Counter()
    for i in range(SCENES["train"]):
        drawn = draw_objects(scene_rng("train", seed, i), PRIOR["train"])  # the scene's first draws
        held = sorted({name for obj in drawn for name in obj})
        single.update(held)
        pairs.update((a, b) for a in held for b in held if a != b)
    return single, pairs


def negative(subset: str, absent: list[str], present: set[str], rng: random.Random, seed: int) -> str:
    """The absent attribute a subset asks about (see the module docstring)."""
    if subset == "random":
        return rng.choice(absent)
    single, pairs = train_statistics(seed)
    if subset == "popular":
        return max(absent, key=lambda n: (single[n], -absent.index(n)))
    return max(absent, key=lambda n: (sum(pairs[(p, n)] for p in present), single[n], -absent.index(n)))


def pope_rows(scene: Scene, subset: str, seed: int) -> list[dict[str, Any]]:
    objs = scene.objects
    present_all = {o.colour for o in objs} | {o.shape for o in objs}
    rows = []
    for key, names in (("colour", COLOURS), ("shape", SHAPES)):
        rng = random.Random(f"easy_vqa_scenes_pope/{scene.split}/{seed}/{scene.index}/{key}")
        present = [n for n in names if any(getattr(o, key) == n for o in objs)]
        absent = [n for n in names if n not in present]
        if not absent:
            continue
        unique = [n for n in present if sum(getattr(o, key) == n for o in objs) == 1]
        yes = rng.choice(unique or present)
        target = max((j for j, o in enumerate(objs) if getattr(o, key) == yes), key=lambda j: (objs[j].area, -j))
        rng = random.Random(f"easy_vqa_scenes_pope/{scene.split}/{seed}/{scene.index}/{key}/{subset}")
        no = negative(subset, absent, present_all, rng, seed)
        for name, answer, tgt in ((yes, "yes", target), (no, "no", None)):
            text = f"is there a {name} shape in the image?" if key == "colour" else f"is there a {name} in the image?"
            rows.append({"question": text, "answer": answer, "kind": key, "object": name, "target": tgt})
    return rows


class EasyVQAScenesPope:
    """POPE-style yes/no probing on easy-VQA scenes (see the module docstring)."""

    default_metric = "pope"

    def __init__(
        self,
        split: str = "test",
        limit: int | None = None,
        subset: str = "random",
        n: int | None = None,
        seed: int = 0,
        canvas: int = CANVAS,
        prior: float | None = None,
    ) -> None:
        check_params("easy_vqa_scenes_pope", split, n, seed, canvas, prior)
        if subset not in POPE_SUBSETS:
            raise ValueError(f"easy_vqa_scenes_pope: subset: must be one of {POPE_SUBSETS}, got {subset!r}")
        self.split, self.subset = split, subset
        self.scenes = [make_scene(split, i, seed, canvas, prior) for i in range(n or SCENES[split])]
        rows = [(s.index, r) for s in self.scenes for r in pope_rows(s, subset, seed)]
        self.rows = rows[:limit] if limit is not None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        return f"easyvqa-scenes-pope-{self.subset}-{self.split}-{index:06d}"

    def __getitem__(self, index: int) -> Sample:
        k, row = self.rows[index]
        scene = self.scenes[k]
        return Sample(
            id=self.sample_id(index),
            question=row["question"],
            images=[rendered(scene).copy()],
            answers=[row["answer"]],
            meta={
                "type": "yes_no",
                "pope_subset": self.subset,
                "kind": row["kind"],
                "object": row["object"],
                **target_meta(scene, row["target"]),
                **scene_meta(scene),
            },
        )
