"""``layer_contrast`` (LogitCombiner): final logits minus the logit lens of a selected layer.

``dz = z_N - z_l`` (``space: logits``, DualPD) or ``log_softmax(z_N) - log_softmax(z_l)``
(``space: log_softmax``, DoLa), kept only on the plausible tokens ``{t : p_N(t) >= alpha * max p_N}``
and ``-inf`` elsewhere; ``alpha = 0`` keeps every token. The cut is compared on probabilities
(``cutoff: probs``) or in log space (``cutoff: log``, Hugging Face's DoLa: ``log p_N >= max log p_N
+ log alpha``); they differ only where rounding puts a token on the edge. Samples without a
selected layer (``-1``) keep ``z_N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from mllm_refine.components import LogitCombiner, ModelInfo, StepView
from mllm_refine.functional import contrast, plausible, relative_top
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch


@dataclass
class LayerContrastCombiner(LogitCombiner):
    """Contrast the final logits with a selected layer's lens inside a plausibility set."""

    name = "layer_contrast"
    noop_params = {"alpha": 1.0}  # only the top token stays plausible: greedy picks it
    alpha: float = 0.1  # plausibility cutoff relative to the top token; 0 disables
    space: Literal["logits", "log_softmax"] = "logits"
    final_norm: bool = True  # apply the final norm to the early exit (DoLa's own reading: False)
    cutoff: Literal["probs", "log"] = "probs"  # where the alpha cut is compared (log: Hugging Face's DoLa)

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: {self.alpha} is outside 0..1")

    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        final = view.logits  # (B, V)
        if layer is None:
            return final
        early = view.lens_at(layer, final_norm=self.final_norm, fill=False)  # (B, V); -1 rows replaced below
        dz = contrast(final, early, self.space)  # (B, V)
        keep = plausible(final, self.alpha) if self.cutoff == "probs" else relative_top(final.log_softmax(-1), self.alpha)
        dz = torch.where(keep, dz, float("-inf"))  # (B, V)
        return torch.where((layer >= 0)[:, None], dz, final)


@dataclass
class DolaContrastCombiner(LayerContrastCombiner):
    """DoLa contrast: ``log_softmax(z_N) - log_softmax(z_j)`` on the relatively probable tokens."""

    name = "dola_contrast"  # layer_contrast with DoLa's defaults (Hugging Face generate's rules)
    alpha: float = 0.1  # relative-top cutoff: keep p_N >= alpha * max p_N; 0 keeps every token
    space: Literal["logits", "log_softmax"] = "log_softmax"
    final_norm: bool = False  # DoLa reads early exits without the final norm
    cutoff: Literal["probs", "log"] = "log"  # compared in log space, as Hugging Face does


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(LayerContrastCombiner)
    register(DolaContrastCombiner)
