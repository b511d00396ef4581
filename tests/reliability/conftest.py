"""Shared helpers of the reliability tests: images, manifests and recipes written in a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image


def save_image(path: Path, size: int = 32, mode: str = "RGB") -> Path:
    """A noise image of ``mode`` (``RGB``, ``L``, ``RGBA`` or ``I;16``) at ``path``."""
    rng = np.random.default_rng(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16)).save(path)
    else:
        channels = {"RGB": 3, "RGBA": 4, "L": 0}[mode]
        shape = (size, size, channels) if channels else (size, size)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def write_manifest(path: Path, rows: list[dict[str, Any] | bytes]) -> Path:
    """One JSON line per row; a ``bytes`` row is written as is (for lines that are not UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def write_recipe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


@pytest.fixture(scope="session")
def helpers() -> dict[str, Callable[..., Any]]:
    return {"image": save_image, "manifest": write_manifest, "recipe": write_recipe, "records": read_records}


@pytest.fixture(scope="session")
def good_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three readable samples with reference answers."""
    root = tmp_path_factory.mktemp("good")
    save_image(root / "images" / "a.png")
    rows = [{"id": f"g{i}", "image": "images/a.png", "question": q, "answers": ["red"]}
            for i, q in enumerate(["what color is it?", "is it red?", "what shape is it?"])]  # fmt: skip
    return write_manifest(root / "m.jsonl", rows)
