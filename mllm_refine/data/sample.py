"""One question about one or more images: what flows from datasets through refiners to the engine."""

from __future__ import annotations

import json
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


def answer_texts(answers: Any) -> list[str]:
    """Reference answers as text, whatever JSON gave them: one or a list, ``3`` -> ``"3"``,
    ``true`` -> ``"true"``."""
    items = answers if isinstance(answers, list) else [answers]
    return [a if isinstance(a, str) else json.dumps(a) for a in items]
