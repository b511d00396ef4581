"""Decoding settings shared by every recipe."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecodeConfig:
    """How tokens are chosen once the parts have produced the step's logits."""

    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    repetition_penalty: float = 1.0  # 1.0 disables; applied to the combined logits
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens: must be at least 1")
        if self.temperature <= 0:
            raise ValueError("temperature: must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k: must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty: must be > 0")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be at least 1")
