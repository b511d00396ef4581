"""The JSONL manifest: one sample a line, read lazily.

Each line is a JSON object::

    {"id": "q1", "image": "images/cat.png", "question": "What animal is this?", "answers": ["cat"]}

``image`` is a path relative to the manifest's folder (or a list of paths for several images);
``answers`` is optional. Any other keys are kept in ``Sample.meta``.

A line that cannot become a sample raises ``SampleError`` with one line naming the sample id
(and the image file), so the run writes an error record and goes on. Image paths may not leave
the manifest's folder (no absolute paths, no ``..``) unless ``allow_outside_root`` is set, and
images over ``max_pixels`` are refused before they are decoded (a decompression bomb guard).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from mllm_refine.data.sample import Sample, answer_texts

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark some editors write first
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's default bomb limit
_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.)*"|[-\w.]+)')


class SampleError(ValueError):
    """One sample cannot be read; the message names the sample."""


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB for any mode: 16- and 32-bit grayscale are scaled to 8 bits (a plain ``convert``
    would clip them to white), alpha is dropped, palettes and grayscale are expanded."""
    if im.mode.startswith("I;16") or im.mode == "I":
        pixels = np.asarray(im).astype(np.int64)
        shift = 8 if im.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 0
        eight = (np.clip(pixels, 0, 65535) >> shift).astype(np.uint8)
        return Image.fromarray(eight, mode="L").convert("RGB")
    return im.convert("RGB")


def open_image(path: Path, shown: str, sid: str, max_pixels: int) -> Image.Image:
    """The image at ``path`` as RGB, or a ``SampleError`` naming the sample and ``shown``."""
    where = f"sample {sid!r}: image {shown!r}"
    try:
        if path.stat().st_size == 0:
            raise SampleError(f"{where}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, against max_pixels
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise SampleError(f"{where}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} (data.max_pixels)")
                return to_rgb(im)
    except FileNotFoundError as e:
        raise SampleError(f"{where}: file not found: {path}") from e
    except Image.DecompressionBombError as e:
        raise SampleError(f"{where}: over PIL's pixel limit ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, SampleError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SampleError(f"{where}: cannot read image: {first}") from e


def _check_text(text: str, where: str) -> None:
    """Refuse text UTF-8 cannot encode: an unpaired surrogate from a ``\\ud800`` escape is valid
    JSON but no character, and no tokenizer reads it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SampleError(f"{where}: holds an unpaired surrogate U+{ord(text[e.start]):04X} at character {e.start + 1}, not text") from e


class Manifest:
    """A sequence of ``Sample`` over a JSONL file; only line offsets are held in memory."""

    def __init__(
        self, path: str | Path, limit: int | None = None, max_pixels: int | None = None, allow_outside_root: bool = False
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data.path: manifest file not found: {self.path}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"data.limit: expected a count of samples (0 or more), got {limit!r}")
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
            raise ValueError(f"data.max_pixels: expected a positive int, got {max_pixels!r}")
        self.root = self.path.parent
        self.max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
        self.allow_outside_root = bool(allow_outside_root)
        self.offsets: list[int] = []
        with self.path.open("rb") as f:
            offset = 0
            for line in f:
                if line.strip():
                    self.offsets.append(offset)
                offset += len(line)
                if limit is not None and len(self.offsets) >= limit:
                    break
        if not self.offsets and limit != 0:
            raise ValueError(f"data.path: {self.path} holds no samples (an empty manifest)")

    def __len__(self) -> int:
        return len(self.offsets)

    def _line(self, index: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(self.offsets[index])
            line = f.readline()
        return line[len(BOM) :] if self.offsets[index] == 0 and line.startswith(BOM) else line

    def where(self, index: int) -> str:
        """``<file>:<line>`` of sample ``index``."""
        with self.path.open("rb") as f:
            line = f.read(self.offsets[index]).count(b"\n") + 1
        return f"{self.path}:{line}"

    def sample_digest(self, index: int) -> str:
        """A digest of the sample's line: a rerun resumes a sample only if its line is unchanged."""
        return hashlib.sha256(self._line(index).strip()).hexdigest()[:16]

    def _record(self, index: int) -> dict:
        line = self._line(index)

        def where() -> str:  # on errors only: finding the line number reads the file up to it
            return f"{self.where(index)} (sample {self.sample_id(index)!r})"

        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SampleError(f"{where()}: not UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1})") from e
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise SampleError(f"{where()}: not a JSON line ({e})") from e
        if not isinstance(record, dict):
            raise SampleError(f"{where()}: expected a JSON object")
        for key in ("id", "question"):
            if key not in record:
                raise SampleError(f"{where()}: missing key {key!r}")
        return record

    def sample_id(self, index: int) -> str:
        """The line's id, even from a line that is not valid JSON or UTF-8 (so its error record
        can be named); ``<file>:<line>`` when no id can be found."""
        line = self._line(index)
        try:
            record = json.loads(line.decode("utf-8"))
            if isinstance(record, dict) and "id" in record:
                return str(record["id"])
        except (UnicodeDecodeError, json.JSONDecodeError):
            match = _ID.search(line)
            if match:
                raw = match.group(1).decode("utf-8", "replace")
                try:
                    return str(json.loads(raw))
                except json.JSONDecodeError:
                    return raw
        return f"{self.path.name}:{index + 1}"

    def _image_path(self, p: object, sid: str) -> Path:
        """``p`` under the manifest's folder; absolute paths and ``..`` that leave it are refused
        unless ``allow_outside_root``."""
        if not isinstance(p, str) or not p.strip():
            raise SampleError(f"sample {sid!r}: image: expected a path string, got {p!r}")
        full = self.root / p
        if not self.allow_outside_root:
            root = self.root.resolve()
            if Path(p).is_absolute() or not full.resolve().is_relative_to(root):
                raise SampleError(
                    f"sample {sid!r}: image {p!r} is outside the manifest's folder {root} "
                    "(set data.allow_outside_root=true to allow)"
                )
        return full

    def __getitem__(self, index: int) -> Sample:
        record = self._record(index)
        sid = str(record.pop("id"))
        question = record.pop("question")
        question = "" if question is None else str(question)
        if not question.strip():
            raise SampleError(f"sample {sid!r}: the question is empty")
        paths = record.pop("image", None) or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        images = [open_image(self._image_path(p, sid), str(p), sid, self.max_pixels) for p in paths]
        answers = record.pop("answers", None)
        if answers is not None:
            answers = answer_texts(answers)
        for name, text in (("question", question), *((f"answers[{i}]", a) for i, a in enumerate(answers or []))):
            _check_text(text, f"sample {sid!r}: {name}")
        return Sample(id=sid, question=question, images=images, answers=answers, meta=record)
