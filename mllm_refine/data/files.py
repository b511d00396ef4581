"""Shared pieces of the file-backed benchmarks: checked JSON reading and lazily loaded rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mllm_refine.data.manifest import SampleError, to_rgb
from mllm_refine.data.sample import Sample


def existing(path: str | Path, key: str, folder: bool = False) -> Path:
    """``path`` if it exists, else a one-line error naming the recipe key."""
    p = Path(path).expanduser()
    if folder and not p.is_dir():
        raise FileNotFoundError(f"data.{key}: folder not found: {p}")
    if not folder and not p.is_file():
        raise FileNotFoundError(f"data.{key}: file not found: {p}")
    return p


def read_json(path: str | Path, key: str) -> Any:
    p = existing(path, key)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"data.{key}: {p}: not valid JSON ({e})") from e


def read_jsonl(path: str | Path, key: str) -> list[dict[str, Any]]:
    p = existing(path, key)
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"data.{key}: {p}:{n}: not a JSON line ({e})") from e
    return rows


def field_of(item: Any, key: str, where: str) -> Any:
    if not isinstance(item, dict) or key not in item:
        raise ValueError(f"{where}: missing key {key!r}")
    return item[key]


@dataclass
class Row:
    id: str
    question: str
    image: Path
    answers: list[str] | None
    meta: dict[str, Any] = field(default_factory=dict)


class Rows:
    """Questions held in memory; images are opened only when a sample is read."""

    default_metric = "exact_match"

    def __init__(self, rows: list[Row], limit: int | None = None) -> None:
        ids = [r.id for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"{type(self).__name__}: sample id {dup!r} appears more than once")
        self.rows = rows[:limit] if limit is not None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        return self.rows[index].id

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        try:
            with Image.open(row.image) as im:
                image = to_rgb(im)  # 16-bit scans are scaled, not clipped to white
        except (OSError, ValueError) as e:
            raise SampleError(f"sample {row.id!r}: cannot read image {str(row.image)!r}: {e}") from e
        return Sample(id=row.id, question=row.question, images=[image], answers=row.answers, meta=dict(row.meta))
