"""``lens_entropy``: per sample, the candidate layer whose logit lens is surest (or least sure).

The logit lens of layer ``l`` is ``lm_head(norm(h_l))`` at the current position; its entropy
``H_l = -sum_v p_l(v) log p_l(v)`` measures how settled that layer already is on the next token.
``pick: lowest`` chooses ``argmin_l H_l`` (the most premature confidence, often the language
prior), ``pick: highest`` chooses ``argmax_l H_l`` (the least informed layer). Pair it with
``layer_contrast``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Callable, Literal

from mllm_refine.components import LayerSelector, ModelInfo, Needs, StepView, resolve_layers
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch  # imported at first use: listing plugins stays fast

__version__ = "0.1.0"


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """``(...,)`` entropy in nats of ``softmax(logits)`` over the last dim (``-inf`` logits count 0)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


@dataclass
class LensEntropySelector(LayerSelector):
    """The candidate layer whose logit lens has the lowest (or highest) entropy, per sample."""

    name = "lens_entropy"
    noop_params = {}  # a selector changes nothing by itself
    layers: list[int] | None = None  # candidate layers; None: blocks 1 .. L // 2
    pick: Literal["lowest", "highest"] = "lowest"  # which end of the entropy range to contrast with
    final_norm: bool = True  # apply the final norm in the logit lens

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        default = list(range(1, max(1, info.num_layers // 2) + 1))
        self._candidates = resolve_layers(self.layers or default, info.num_layers, "layers")

    def candidates(self) -> list[int]:
        return self._candidates

    def needs(self) -> Needs:
        return Needs(hidden=frozenset(self._candidates))

    def entropies(self, view: StepView) -> torch.Tensor:
        """``(B, C)``: lens entropy of each candidate layer."""
        return torch.stack([entropy(view.lens(l, final_norm=self.final_norm)) for l in self._candidates], dim=1)

    def select(self, view: StepView) -> torch.Tensor:
        h = self.entropies(view)  # (B, C)
        index = h.argmin(1) if self.pick == "lowest" else h.argmax(1)  # (B,)
        return torch.tensor(self._candidates, device=h.device)[index]


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(LensEntropySelector)


@hookimpl
def register_recipes(register: Callable[[str, Path], None]) -> None:
    register("entropy_contrast", Path(str(files(__name__) / "recipes" / "entropy_contrast.yaml")))
