"""The JSONL manifest: one sample a line, read lazily.

Each line is a JSON object::

    {"id": "q1", "image": "images/cat.png", "question": "What animal is this?", "answers": ["cat"]}

``image`` is a path relative to the manifest's folder (or a list of paths for several images);
``answers`` is optional. Any other keys are kept in ``Sample.meta``.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mllm_refine.data.sample import Sample


class SampleError(ValueError):
    """One sample cannot be read; the message names the sample."""


class Manifest:
    """A sequence of ``Sample`` over a JSONL file; only line offsets are held in memory."""

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data.path: manifest file not found: {self.path}")
        self.root = self.path.parent
        self.offsets: list[int] = []
        with self.path.open("rb") as f:
            offset = 0
            for line in f:
                if line.strip():
                    self.offsets.append(offset)
                offset += len(line)
                if limit is not None and len(self.offsets) >= limit:
                    break

    def __len__(self) -> int:
        return len(self.offsets)

    def _record(self, index: int) -> dict:
        with self.path.open("rb") as f:
            f.seek(self.offsets[index])
            line = f.readline()
        where = f"{self.path}:{index + 1}"
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SampleError(f"{where}: not a JSON line ({e})") from e
        if not isinstance(record, dict):
            raise SampleError(f"{where}: expected a JSON object")
        for key in ("id", "question"):
            if key not in record:
                raise SampleError(f"{where}: missing key {key!r}")
        return record

    def sample_id(self, index: int) -> str:
        return str(self._record(index)["id"])

    def __getitem__(self, index: int) -> Sample:
        record = self._record(index)
        sid = str(record.pop("id"))
        paths = record.pop("image", None) or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        images = []
        for p in paths:
            try:
                with Image.open(self.root / p) as im:
                    images.append(im.convert("RGB"))
            except (OSError, ValueError) as e:
                raise SampleError(f"sample {sid!r}: cannot read image {p!r}: {e}") from e
        answers = record.pop("answers", None)
        if isinstance(answers, str):
            answers = [answers]
        question = str(record.pop("question"))
        return Sample(id=sid, question=question, images=images, answers=answers, meta=record)
