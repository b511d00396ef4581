"""``layer_contrast`` (LogitCombiner): final logits minus the logit lens of a selected layer.

``dz = z_N - z_l`` (``space: logits``, DualPD) or ``log_softmax(z_N) - log_softmax(z_l)``
(``space: log_softmax``, DoLa), kept only on the plausible tokens ``{t : p_N(t) >= alpha * max p_N}``
and ``-inf`` elsewhere; ``alpha = 0`` keeps every token. Samples without a selected layer
(``-1``) keep ``z_N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from mllm_refine.components import LogitCombiner, ModelInfo
from mllm_refine.engine.step_view import StepView
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch


def plausible(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(B, V)`` bool: tokens whose probability is at least ``alpha`` times the row's maximum."""
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return probs >= alpha * probs.max(dim=-1, keepdim=True).values


@dataclass
class LayerContrastCombiner(LogitCombiner):
    """Contrast the final logits with a selected layer's lens inside a plausibility set."""

    name = "layer_contrast"
    noop_params = {"alpha": 1.0}  # only the top token stays plausible: greedy picks it
    alpha: float = 0.1  # plausibility cutoff relative to the top token; 0 disables
    space: Literal["logits", "log_softmax"] = "logits"
    final_norm: bool = True  # apply the final norm to the early exit (DoLa's own reading: False)

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: {self.alpha} is outside 0..1")

    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        final = view.logits  # (B, V)
        if layer is None:
            return final
        early = view.lens_at(layer, final_norm=self.final_norm)  # (B, V)
        if self.space == "log_softmax":
            dz = final.log_softmax(-1) - early.log_softmax(-1)
        else:
            dz = final - early
        dz = dz.masked_fill(~plausible(final, self.alpha), float("-inf"))  # (B, V)
        return torch.where((layer >= 0)[:, None], dz, final)


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(LayerContrastCombiner)
