"""LogitCombiner: turns the final logits and a selected layer into the logits to decode from."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from mllm_refine.components.base import Component
from mllm_refine.components.step_view import StepView
from mllm_refine.lazy import torch


class LogitCombiner(Component):
    """Combines ``view.logits`` (B, V) with the logit lens of the selected layer (B, V).

    ``uses_layer`` tells the engine that this combiner needs a ``LayerSelector`` and reads
    ``view.lens_at(layer)``; the engine then keeps the residual stream of every candidate layer.
    The result is ``(B, V)`` float; ``-inf`` marks tokens that may not be chosen.
    """

    kind: ClassVar[str] = "logit_combiner"
    uses_layer: ClassVar[bool] = True

    @abstractmethod
    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        """``(B, V)`` logits for this step; ``layer`` is the selector's ``(B,)`` choice or None."""
