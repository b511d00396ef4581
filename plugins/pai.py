"""PAI, "Paying More Attention to Image" (ECCV 2024, arXiv 2407.21771): attention amplification
and guidance against the image-free prompt. Two parts, usable alone or together.

``pai`` (HeadFilter). Language priors drown the image; PAI lifts the current row's pre-softmax
scores on the image keys, in every head of the blocks it acts in:

    s <- s + alpha * |s|        (image keys only; the softmax renormalises the row)

so positive scores grow by ``1 + alpha`` and negative ones shrink towards 0: both raise the
image's share of the row.

Readings (parameters):
- blocks: PAI's code patches decoder layers ``2 .. 31`` of LLaVA's 32 counted from 0, i.e. all
  but the first two blocks; here blocks count from 1, so the default is ``3 .. L``;
- the row: the last position of each forward pass (the last prompt token at prefill, then each
  new token), as in PAI's code.

``pai_guidance`` (LogitCombiner). A branch answers the same prompt without the image, decoded in
lockstep (its own KV cache, fed the tokens the answer chose); the head filters do not act in it
(PAI's code switches the amplification off for that pass). On log-probabilities,

    s = log_softmax(z(image)),  u = log_softmax(z(no image))          (B, V)
    out = u + gamma * (s - u)   on {t : s_t >= max s + log beta},  -inf elsewhere

with gamma = 1.1 and beta = 0.1 as PAI's run commands and code (the cut is hard-coded there).
``gamma = 1`` returns ``s`` uncut and runs no branch, as the code does. Readings (parameters):
- ``prompt: strip`` (the code): each main prompt with its image markup cut out, the text around it
  untouched; ``template``: the chat template rendered for the question alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from mllm_refine.components import (
    AttentionRow,
    Branch,
    BranchAdapter,
    HeadFilter,
    LogitCombiner,
    ModelInfo,
    Needs,
    Sample,
    StepView,
    resolve_layers,
)
from mllm_refine.functional import relative_top
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch

BRANCH = "image_free"


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


def guide(z: torch.Tensor, z_free: torch.Tensor, gamma: float, beta: float) -> torch.Tensor:
    """``u + gamma (s - u)`` on log-probabilities, cut to ``s >= max s + log beta``; ``(B, V)``."""
    s = torch.log_softmax(z, dim=-1)  # (B, V) with the image
    u = torch.log_softmax(z_free, dim=-1)  # (B, V) without it
    out = u + gamma * (s - u)
    return out.masked_fill(~relative_top(s, beta), float("-inf"))


@dataclass
class PAIGuidance(LogitCombiner):
    """PAI's guidance: push the answer's log-probabilities away from the image-free prompt's."""

    name = "pai_guidance"
    uses_layer = False
    noop_params = {"gamma": 1.0}
    gamma: float = 1.1  # guidance scale; 1 disables (no branch runs)
    beta: float = 0.1  # plausibility cutoff relative to the top token with the image; 0 keeps all
    prompt: Literal["strip", "template"] = "strip"  # strip: the prompt minus its image markup (the code)

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if self.gamma < 1:
            raise ValueError(f"gamma: {self.gamma} must be >= 1 (1 disables the guidance)")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta: {self.beta} is outside 0..1")
        if self.prompt not in ("strip", "template"):
            raise ValueError(f"prompt: {self.prompt!r} is not 'strip' or 'template'")

    def needs(self) -> Needs:
        if self.gamma == 1:
            return Needs()
        return Needs(branches=frozenset({Branch(BRANCH, self.free_inputs)}))

    def free_inputs(self, inputs: Any, samples: list[Sample], adapter: BranchAdapter) -> Any:
        """The batch's prompts without their images (``BranchAdapter.without_images``)."""
        return adapter.without_images(inputs, samples, self.prompt)

    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        if self.gamma == 1:
            return torch.log_softmax(view.logits, dim=-1)  # (B, V), no cut: as PAI's code at gamma 1
        return guide(view.logits, view.branch_logits(BRANCH), self.gamma, self.beta)


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(PAIFilter)
    register(PAIGuidance)
