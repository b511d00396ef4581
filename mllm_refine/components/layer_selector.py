"""LayerSelector: picks, per sample and step, a layer to contrast with (or none)."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from mllm_refine.components.base import Component
from mllm_refine.components.step_view import StepView
from mllm_refine.lazy import torch


class LayerSelector(Component):
    """Chooses a layer per sample from ``candidates()``.

    ``select`` returns a ``(B,)`` long tensor of layer numbers (0..L, see ``Needs``), ``-1`` where
    a sample has no choice (e.g. no image tokens); combiners then fall back to the final logits.
    """

    kind: ClassVar[str] = "layer_selector"

    @abstractmethod
    def candidates(self) -> list[int]:
        """Layers this selector may return (valid after ``setup``)."""

    @abstractmethod
    def select(self, view: StepView) -> torch.Tensor:
        """``(B,)`` long: the chosen layer of each sample at this step."""
