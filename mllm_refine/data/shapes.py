"""``shapes``: a synthetic VQA set drawn in memory (a coloured shape on a plain background).

It needs no files, so every recipe and test can run anywhere; it is a smoke test of the whole
pipeline, not a benchmark.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from mllm_refine.data.sample import Sample

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(image)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


class Shapes:
    """``n`` seeded samples; questions ask for the colour, the shape, or yes/no about either."""

    # Sample i depends on the seed and i alone: more samples extend a run, as a larger limit does.
    count_params = ("limit", "n")

    def __init__(self, n: int = 32, seed: int = 0, size: int = 64, limit: int | None = None) -> None:
        self.n = min(n, limit) if limit is not None else n
        self.seed, self.size = seed, size

    def __len__(self) -> int:
        return self.n

    def sample_id(self, index: int) -> str:
        return f"shapes-{self.seed}-{index:05d}"

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = random.Random(self.seed * 1_000_003 + index)
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        image = draw(shape, colour, self.size, rng)
        kind = index % 3
        if kind == 0:
            question, answer = "What color is the shape?", colour
        elif kind == 1:
            question, answer = "What shape is in the image?", shape
        else:
            asked = rng.choice(SHAPES)
            question, answer = f"Is there a {asked} in the image?", "yes" if asked == shape else "no"
        meta = {"type": ("colour", "shape", "yes_no")[kind]}
        return Sample(id=self.sample_id(index), question=question, images=[image], answers=[answer], meta=meta)
