"""One question about one or more images: what flows from datasets through refiners to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    id: str
    question: str
    images: list[Image.Image]
    answers: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
