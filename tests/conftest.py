"""Shared fixtures: tiny models of every family, a few images and questions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_refine.data.sample import Sample
from mllm_refine.testing.tiny_models import TINY_MODELS

# Small tensor ops crawl with many threads on 2 cores.
torch.set_num_threads(1)

QUESTIONS = [
    "what color is the circle?",
    "is there a red square in the image?",
    "how many",
    "what shape is in the picture? please answer with a single word",
]


def make_samples(n: int = 4, seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> list[Sample]:
    rng = np.random.default_rng(seed)
    sizes = sizes or [(40, 48), (32, 32), (56, 40), (48, 64)]
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out.append(Sample(id=f"s{i}", question=QUESTIONS[i % len(QUESTIONS)], images=[image], answers=["red"]))
    return out


@pytest.fixture(scope="session", params=sorted(TINY_MODELS))
def tiny(request):
    """``(name, model, processor)`` for each tiny model family."""
    model, processor = TINY_MODELS[request.param]()
    return request.param, model, processor


@pytest.fixture
def samples() -> list[Sample]:
    return make_samples()
