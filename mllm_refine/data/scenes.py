"""easy-VQA scenes: 1 to 4 easy-VQA shapes, each at its own scale, on one larger plain canvas.

easy-VQA images are one coloured shape on a plain background, drawn at 64 px; a model that reads
them well says little about whether it can find a small object. A scene cuts the shapes out of
easy-VQA's own images (train images for the train split, test images for the test split), scales
each one and places them at random, non-overlapping positions on a ``canvas`` x ``canvas`` image.

Everything follows from ``(split, seed, scene index)``: objects, sources, boxes and pixels are
drawn with one seeded ``random.Random`` per scene and rendered on demand, so nothing is written
to disk and the same parameters give byte-identical images.

Cut-out: the background is the colour of the image's corners, the fill the most common colour far
from it; each pixel's alpha is its projection on ``fill - background`` (this undoes the shapes'
anti-aliasing), and the shape's box is where alpha > 0.05. Each object's longer side is
log-uniform in ``SIDE`` of the canvas, drawn from a source image whose shape needs at most
``MAX_UPSCALE`` times its size.

Prior (``prior``, default 0.7 on train, 0 on test): with probability ``prior`` an object after the
first takes the partner colour of the scene's first object (``PARTNER``), and with probability
``prior`` an object takes its colour's favourite shape (``FAVOURITE``); first colours are drawn
with the weights ``POPULARITY``. With ``prior=0`` colours and shapes are uniform and independent.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from mllm_refine.data.easy_vqa import COLOURS, SHAPES, _check_split, answer_type, image_labels, load_image
from mllm_refine.data.sample import Sample

CANVAS = 224  # the common encoder input; 8 x 8 Qwen2.5-VL merged tokens of 28 px, 4 x 4 cells of the embedded model
SCENES = {"train": 8000, "test": 500}  # default scenes per split (about 3 questions each)
MAX_OBJECTS = 4
SIDE = (1 / 16, 1 / 2)  # an object's longer box side, as a share of the canvas (log-uniform)
GAP = 4  # px between any two boxes
MAX_UPSCALE = 4  # a shape is drawn at most this many times its size in its easy-VQA image
PRIOR = {"train": 0.7, "test": 0.0}
PARTNER = {"red": "green", "green": "red", "blue": "yellow", "yellow": "blue",
           "black": "gray", "gray": "black", "teal": "brown", "brown": "teal"}  # fmt: skip
FAVOURITE = {"red": "circle", "green": "triangle", "blue": "rectangle", "black": "circle",
             "gray": "triangle", "teal": "rectangle", "brown": "circle", "yellow": "triangle"}  # fmt: skip
POPULARITY = {"red": 6, "green": 5, "blue": 4, "black": 3, "gray": 3, "teal": 2, "brown": 2, "yellow": 1}
# Relative size = box area / image area. Thresholds in cells of 28 px on a 224 canvas (a Qwen2.5-VL
# merged token): small < 1 cell (1/64), medium < 4 cells (1/16, one 16 px patch of the embedded
# model's 64 px input), large from there.
SIZE_BUCKETS = (("small", 1 / 64), ("medium", 1 / 16), ("large", math.inf))


def size_bucket(rel_size: float) -> str:
    return next(name for name, upper in SIZE_BUCKETS if rel_size < upper)


@dataclass(frozen=True)
class Cutout:
    """One easy-VQA shape: its fill colour, its alpha over its tight box, its image's background."""

    fill: tuple[int, int, int]
    alpha: np.ndarray  # (h, w) float in 0..1
    background: tuple[int, int, int]


@lru_cache(maxsize=None)
def cutout(split: str, image_id: int) -> Cutout:
    a = np.asarray(load_image(split, image_id), dtype=np.float64)  # (64, 64, 3)
    corners = [tuple(a[y, x].astype(int)) for y in (0, -1) for x in (0, -1)]
    bg = np.array(max(set(corners), key=corners.count), dtype=np.float64)
    dist = np.linalg.norm(a - bg, axis=-1)  # (64, 64)
    far = a[dist > 0.5 * dist.max()].astype(int)
    colours, counts = np.unique(far, axis=0, return_counts=True)
    fill = colours[counts.argmax()].astype(np.float64)
    d = fill - bg
    alpha = np.clip(((a - bg) @ d) / (d @ d), 0.0, 1.0)  # (64, 64)
    ys, xs = np.nonzero(alpha > 0.05)
    tight = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return Cutout((int(fill[0]), int(fill[1]), int(fill[2])), tight, (int(bg[0]), int(bg[1]), int(bg[2])))


@lru_cache(maxsize=None)
def pools(split: str) -> dict[tuple[str, str], tuple[int, ...]]:
    """Image ids per ``(shape, colour)``, over the images whose shape and colour are both known."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, d in sorted(image_labels(split).items()):
        if "shape" in d and "colour" in d:
            out.setdefault((d["shape"], d["colour"]), []).append(i)
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    image_id: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    def as_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "colour": self.colour, "shape": self.shape, "image_id": self.image_id}


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    canvas: int
    background: tuple[int, int, int]
    objects: tuple[SceneObject, ...]


def scene_rng(split: str, seed: int, index: int) -> random.Random:
    return random.Random(f"easy_vqa_scenes/{split}/{seed}/{index}")


def draw_objects(rng: random.Random, prior: float) -> list[tuple[str, str]]:
    """``(colour, shape)`` of 1 to ``MAX_OBJECTS`` objects, with the prior described above."""
    k = rng.randint(1, MAX_OBJECTS)
    weights = [POPULARITY[c] if prior > 0 else 1 for c in COLOURS]
    out: list[tuple[str, str]] = []  # (colour, shape)
    for j in range(k):
        if j > 0 and rng.random() < prior:
            colour = PARTNER[out[0][0]]
        else:
            colour = rng.choices(COLOURS, weights)[0]
        shape = FAVOURITE[colour] if rng.random() < prior else rng.choice(SHAPES)
        out.append((colour, shape))
    return out


def _free(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + GAP <= a0 or a1 + GAP <= x0 or y1 + GAP <= b0 or b1 + GAP <= y0 for a0, b0, a1, b1 in taken)


def draw_side(rng: random.Random, canvas: int) -> float:
    """An object's longer box side in px, log-uniform over ``SIDE`` of the canvas."""
    return math.exp(rng.uniform(math.log(SIDE[0] * canvas), math.log(SIDE[1] * canvas)))


def pick_source(rng: random.Random, ids: tuple[int, ...], split: str, side: float) -> int:
    """A source image for a box of ``side`` px: one whose shape needs at most ``MAX_UPSCALE``
    (upscaled edges blur), else the largest."""
    fit = [i for i in ids if MAX_UPSCALE * max(cutout(split, i).alpha.shape) >= side]
    return rng.choice(fit) if fit else max(ids, key=lambda i: (max(cutout(split, i).alpha.shape), -i))


def place(
    rng: random.Random, sizes: list[tuple[int, int]], sides: list[float], canvas: int
) -> list[tuple[int, int, int, int]]:
    """Non-overlapping boxes (``GAP`` px apart) for tight boxes of ``sizes`` (w, h) scaled to a
    longer side of ``sides``; an object that finds no room in 50 tries is shrunk by 15 %."""
    taken: list[tuple[int, int, int, int]] = []
    for (w0, h0), side in zip(sizes, sides):
        while True:
            scale = side / max(w0, h0)
            w, h = max(2, round(w0 * scale)), max(2, round(h0 * scale))
            for _ in range(50):
                x, y = rng.randint(1, canvas - w - 1), rng.randint(1, canvas - h - 1)
                if _free((x, y, x + w, y + h), taken):
                    taken.append((x, y, x + w, y + h))
                    break
            else:
                side *= 0.85
                continue
            break
    return taken


def make_scene(split: str, index: int, seed: int = 0, canvas: int = CANVAS, prior: float | None = None) -> Scene:
    _check_split(split)
    rng = scene_rng(split, seed, index)
    drawn = draw_objects(rng, PRIOR[split] if prior is None else prior)
    pool = pools(split)
    sides = [draw_side(rng, canvas) for _ in drawn]
    ids = [pick_source(rng, pool[(shape, colour)], split, side) for (colour, shape), side in zip(drawn, sides)]
    cuts = [cutout(split, i) for i in ids]
    boxes = place(rng, [(c.alpha.shape[1], c.alpha.shape[0]) for c in cuts], sides, canvas)
    objects = tuple(SceneObject(c, s, i, b) for (c, s), i, b in zip(drawn, ids, boxes))
    return Scene(split, index, canvas, cuts[0].background, objects)


def placed_alpha(scene: Scene, obj: SceneObject) -> Image.Image:
    """``obj``'s alpha resized to its box, as ``render`` pastes it: an 8-bit ``(h, w)`` image."""
    cut = cutout(scene.split, obj.image_id)
    x0, y0, x1, y1 = obj.box
    w, h = x1 - x0, y1 - y0
    grow = w / cut.alpha.shape[1]
    resample = Image.Resampling.BICUBIC if grow > 1 else Image.Resampling.BILINEAR
    alpha = Image.fromarray(np.round(cut.alpha * 255).astype(np.uint8)).resize((w, h), resample)
    if grow > 1:  # upscaled edges blur over `grow` px: steepen them back to about one
        a = np.asarray(alpha, dtype=np.float64) / 255
        alpha = Image.fromarray(np.round(np.clip((a - 0.5) * grow + 0.5, 0, 1) * 255).astype(np.uint8))
    return alpha


def render(scene: Scene) -> Image.Image:
    """The scene's RGB image: each cut-out resized to its box and pasted with its alpha."""
    image = Image.new("RGB", (scene.canvas, scene.canvas), scene.background)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        image.paste(Image.new("RGB", (x1 - x0, y1 - y0), cutout(scene.split, obj.image_id).fill), (x0, y0), placed_alpha(scene, obj))
    return image


def cell_labels(scene: Scene, grid: int, min_cell: float = 0.15, min_object: float = 0.4) -> np.ndarray:
    """``(grid, grid)`` index of the object each cell of a ``grid x grid`` partition shows, -1 for
    background. A cell shows the object with the most alpha in it when that covers ``min_cell``
    of the cell, or holds ``min_object`` of the object's own alpha (so an object smaller than a
    cell still names the cell it mostly sits in)."""
    mass = np.zeros((len(scene.objects), grid, grid))  # (K, G, G) alpha summed per cell
    edges = np.linspace(0, scene.canvas, grid + 1)
    for k, obj in enumerate(scene.objects):
        full = np.zeros((scene.canvas, scene.canvas))  # (H, W)
        x0, y0, x1, y1 = obj.box
        full[y0:y1, x0:x1] = np.asarray(placed_alpha(scene, obj), dtype=np.float64) / 255
        rows = np.add.reduceat(full, edges[:-1].astype(int), axis=0)  # (G, W)
        mass[k] = np.add.reduceat(rows, edges[:-1].astype(int), axis=1)  # (G, G)
    cell_area = (scene.canvas / grid) ** 2
    share_of_object = mass / np.maximum(mass.sum(axis=(1, 2), keepdims=True), 1e-9)  # (K, G, G)
    best = mass.argmax(0)  # (G, G)
    best_mass = np.take_along_axis(mass, best[None], 0)[0]
    best_share = np.take_along_axis(share_of_object, best[None], 0)[0]
    shown = (best_mass >= min_cell * cell_area) | (best_share >= min_object)
    return np.where(shown, best, -1)


def check_params(where: str, split: str, n: int | None, seed: int, canvas: int, prior: float | None) -> None:
    """One clear line for a parameter out of range."""
    _check_split(split)
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"{where}: n: expected a positive number of scenes, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"{where}: seed: expected an integer, got {seed!r}")
    if not isinstance(canvas, int) or not 64 <= canvas <= 2048:
        raise ValueError(f"{where}: canvas: expected an integer between 64 and 2048 px, got {canvas!r}")
    if prior is not None and (not isinstance(prior, (int, float)) or not 0.0 <= prior <= 1.0):
        raise ValueError(f"{where}: prior: expected a probability in 0..1, got {prior!r}")


# ---------------------------------------------------------------------------------------------
# Questions: easy-VQA's own wording (its questions.json), asked only where the scene makes them
# unambiguous. Negated forms ("is there not a red shape?") are left out: they test reading, not
# looking.

COLOUR_OF = ("what color is the {}?", "what is the color of the {}?")
SHAPE_OF = ("what is the {} shape?",)
ONLY_SHAPE = ("what shape is in the image?", "what shape does the image contain?", "what shape is present?")
HAS_COLOUR = ("is there a {} shape?", "is a {} shape present?", "does the image contain a {} shape?",
              "is there a {} shape in the image?")  # fmt: skip
HAS_SHAPE = ("is there a {}?", "is a {} present?", "does the image contain a {}?", "is there a {} in the image?")
SIDES = ("left", "right", "top", "bottom")


def position_margin(canvas: int) -> int:
    """px by which the object on a side must clear every other box."""
    return canvas // 16


def on_side(objects: tuple[SceneObject, ...], side: str, margin: int) -> int | None:
    """The index of the one object whose box ends ``margin`` px before every other box begins,
    towards ``side``; None when no object is clearly there (or the scene has one object)."""
    if len(objects) < 2:
        return None
    for j, o in enumerate(objects):
        others = [p.box for k, p in enumerate(objects) if k != j]
        x0, y0, x1, y1 = o.box
        clear = {
            "left": all(x1 + margin <= b[0] for b in others),
            "right": all(b[2] + margin <= x0 for b in others),
            "top": all(y1 + margin <= b[1] for b in others),
            "bottom": all(b[3] + margin <= y0 for b in others),
        }[side]
        if clear:
            return j
    return None


@dataclass(frozen=True)
class Question:
    kind: str  # single | colour_of_shape | shape_of_colour | position | presence
    text: str
    answer: str
    target: int | None  # index of the object the question is about; None for an absent one


def _holder(objects: tuple[SceneObject, ...], key: str, name: str) -> int:
    """The object with ``key == name``: the only one, else the largest (first on ties)."""
    held = [j for j, o in enumerate(objects) if getattr(o, key) == name]
    return max(held, key=lambda j: (objects[j].area, -j))


def open_questions(scene: Scene, answer: str) -> list[tuple[str, list[Question]]]:
    """Candidates answered by a ``colour`` or a ``shape``, grouped by kind."""
    objs, margin = scene.objects, position_margin(scene.canvas)
    asked, other = ("colour", "shape") if answer == "colour" else ("shape", "colour")
    groups: list[tuple[str, list[Question]]] = []
    if len(objs) == 1:
        texts = [t.format("shape") for t in COLOUR_OF] if answer == "colour" else list(ONLY_SHAPE)
        groups.append(("single", [Question("single", t, getattr(objs[0], asked), 0) for t in texts]))
    unique = []
    for j, o in enumerate(objs):
        name = getattr(o, other)
        if sum(getattr(p, other) == name for p in objs) == 1:
            templates = COLOUR_OF if answer == "colour" else SHAPE_OF
            unique += [Question(f"{asked}_of_{other}", t.format(name), getattr(o, asked), j) for t in templates]
    if unique:
        groups.append((f"{asked}_of_{other}", unique))
    placed = []
    for side in SIDES:
        k = on_side(objs, side, margin)
        if k is not None:
            text = f"what color is the shape on the {side}?" if answer == "colour" else f"what shape is on the {side}?"
            placed.append(Question("position", text, getattr(objs[k], asked), k))
    if placed:
        groups.append(("position", placed))
    return groups


def presence_question(scene: Scene, rng: random.Random, yes: bool) -> Question:
    """"is there a red shape?" / "is there a triangle?"; the attribute asked about is held by
    exactly one object where the scene has such an attribute."""
    objs = scene.objects
    kinds = [("colour", COLOURS, HAS_COLOUR), ("shape", SHAPES, HAS_SHAPE)]
    rng.shuffle(kinds)
    for key, names, templates in kinds:
        present = sorted({getattr(o, key) for o in objs}, key=names.index)
        if yes:
            unique = [n for n in present if sum(getattr(o, key) == n for o in objs) == 1]
            name = rng.choice(unique or present)
            return Question("presence", rng.choice(templates).format(name), "yes", _holder(objs, key, name))
        absent = [n for n in names if n not in present]
        if absent:
            return Question("presence", rng.choice(templates).format(rng.choice(absent)), "no", None)
    raise AssertionError("a scene of at most 4 objects always lacks some colour")


def scene_questions(scene: Scene, seed: int) -> list[Question]:
    """Up to three questions: one answered by a colour, one by a shape, one yes/no (yes on even
    scene indices, so the split is balanced)."""
    rng = random.Random(f"easy_vqa_scenes/questions/{scene.split}/{seed}/{scene.index}")
    out = []
    for answer in ("colour", "shape"):
        groups = open_questions(scene, answer)
        if groups:
            out.append(rng.choice(rng.choice(groups)[1]))
    out.append(presence_question(scene, rng, yes=scene.index % 2 == 0))
    return out


def target_meta(scene: Scene, target: int | None) -> dict[str, Any]:
    """The target's box, its relative size (box area / image area) and size bucket."""
    if target is None:
        return {"target_box": None, "rel_size": None, "size_bucket": None}
    obj = scene.objects[target]
    rel = obj.area / (scene.canvas * scene.canvas)
    return {"target_box": list(obj.box), "rel_size": round(rel, 6), "size_bucket": size_bucket(rel)}


def scene_meta(scene: Scene) -> dict[str, Any]:
    return {
        "scene": scene.index,
        "split": scene.split,
        "image_size": [scene.canvas, scene.canvas],
        "objects": [o.as_dict() for o in scene.objects],
    }


@lru_cache(maxsize=8)
def rendered(scene: Scene) -> Image.Image:
    """``render`` kept for the few questions of the same scene that come in a row; copy before use."""
    return render(scene)


class EasyVQAScenes:
    """Colour, shape and yes/no questions about seeded easy-VQA scenes (docs/scenes.md).

    ``n`` scenes of ``split`` (default 8,000 train / 500 test, about three questions each);
    ``limit`` keeps the first questions."""

    default_metric = "exact_match"

    def __init__(
        self,
        split: str = "test",
        limit: int | None = None,
        n: int | None = None,
        seed: int = 0,
        canvas: int = CANVAS,
        prior: float | None = None,
    ) -> None:
        check_params("easy_vqa_scenes", split, n, seed, canvas, prior)
        self.split, self.seed = split, seed
        self.scenes = [make_scene(split, i, seed, canvas, prior) for i in range(n or SCENES[split])]
        rows = [(s.index, q) for s in self.scenes for q in scene_questions(s, seed)]
        self.rows = rows[:limit] if limit is not None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        return f"easyvqa-scenes-{self.split}-{index:06d}"

    def __getitem__(self, index: int) -> Sample:
        k, q = self.rows[index]
        scene = self.scenes[k]
        return Sample(
            id=self.sample_id(index),
            question=q.text,
            images=[rendered(scene).copy()],
            answers=[q.answer],
            meta={"type": answer_type(q.answer), "kind": q.kind, **target_meta(scene, q.target), **scene_meta(scene)},
        )
