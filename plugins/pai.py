"""PAI, "Paying More Attention to Image" (ECCV 2024, arXiv 2407.21771): attention amplification.

Language priors drown the image; PAI lifts the current row's pre-softmax scores on the image
keys, in every head of the blocks it acts in:

    s <- s + alpha * |s|        (image keys only; the softmax renormalises the row)

so positive scores grow by ``1 + alpha`` and negative ones shrink towards 0: both raise the
image's share of the row.

Readings (parameters):
- blocks: PAI's code patches decoder layers ``2 .. 31`` of LLaVA's 32 counted from 0, i.e. all
  but the first two blocks; here blocks count from 1, so the default is ``3 .. L``;
- the row: the last position of each forward pass (the last prompt token at prefill, then each
  new token), as in PAI's code.
PAI's optional guidance against the image-free prompt needs a second, image-free branch per
step; it is not part of this filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from mllm_refine.components import AttentionRow, HeadFilter, ModelInfo, resolve_layers
from mllm_refine.hookspecs import hookimpl


def amplify(scores: torch.Tensor, image_keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s + alpha * |s|`` on the image keys of scores ``(B, H, K)``; ``image_keys`` is ``(B, K)``."""
    return torch.where(image_keys[:, None, :], scores + alpha * scores.abs(), scores)


@dataclass
class PAIFilter(HeadFilter):
    """PAI: amplify the pre-softmax image scores of the current row by ``alpha * |s|``."""

    name = "pai"
    noop_params = {"alpha": 0.0}
    alpha: float = 0.2  # amplification of the image scores
    layers: list[int] | None = None  # blocks to act in; None: 3 .. L (all but the first two)

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if self.alpha < 0:
            raise ValueError(f"alpha: {self.alpha} must be >= 0")
        blocks = self.layers if self.layers is not None else list(range(3, info.num_layers + 1))
        self._layers = [] if self.alpha == 0 else resolve_layers(blocks, info.num_layers, "layers")

    def active_layers(self) -> list[int]:
        return self._layers

    def conflicts(self, parts: Any) -> str | None:
        if sum(p.name == self.name for p in parts.components()) > 1:
            return "listed twice: the amplifications would compound; raise alpha instead"
        return None

    def scores(self, scores: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        return amplify(scores, row.image_keys, self.alpha)


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(PAIFilter)
