"""VCD, "Mitigating Object Hallucinations in Large Vision-Language Models through Visual
Contrastive Decoding" (Leng et al., CVPR 2024, arXiv 2311.16922).

``vcd`` (LogitCombiner): a second branch sees the image with diffusion noise, ``v'``, and is
decoded in lockstep with the answer (its own KV cache, fed the tokens the answer chose). Each step
``(1 + a) z(v) - a z(v')`` on the plausible tokens ``{t : p(t | v) >= beta * max p(. | v)}``,
``-inf`` elsewhere (the cut on the clean logits, i.e. on ``p(. | v)``, as the authors' sampler);
then the recipe's penalty, warpers and sampler. The authors sample from it (``do_sample=True``,
temperature 1, no top-p or top-k) with ``a = 1``; their sampler and evaluation script default
``beta`` to 0.1, their POPE run script passes 0.2 (``recipes/vcd.yaml`` follows the run script,
``recipes/vcd_greedy.yaml`` decodes greedily).

Noise: ``v' = sqrt(abar_t) v + sqrt(1 - abar_t) eps`` on the processor's normalised pixel tensor
(not clamped), ``abar_t = prod_{s <= t} (1 - beta_s)``, ``t = noise_step`` counted from 0 as in the
authors' code. ``schedule: sigmoid`` is the authors' released schedule (``beta_s = sigmoid(linspace
(-6, 6, T))`` scaled into ``[1e-5, 5e-3]``); ``schedule: linear`` is DDPM's ``linspace(1e-4, 0.02, T)``.
``eps`` is drawn per sample from a generator seeded by ``seed`` and the sample id, image by image
(tile by tile for tiled images), so a sample's noise never depends on its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

from mllm_refine.components import Branch, BranchAdapter, LogitCombiner, ModelInfo, Needs, Sample, StepView
from mllm_refine.functional import relative_top, sample_generators
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch

BRANCH = "noisy"
NOISE_STREAM = "vcd-noise"  # its own stream: never the one the sampler draws from


def alpha_bar(steps: int, schedule: str) -> torch.Tensor:
    """``(steps,)`` float64: ``abar_t = prod_{s <= t} (1 - beta_s)`` of the schedule."""
    if schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    elif schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    else:
        raise ValueError(f"schedule: {schedule!r} is not 'sigmoid' or 'linear'")
    return torch.cumprod(1 - betas, dim=0)


def image_pixels(inputs: Any) -> list[torch.Tensor]:
    """Per image of the batch, in order, its slice of ``pixel_values``: ``(C, H, W)``, or
    ``(tiles, C, H, W)`` for tiled images, or ``(patches, D)`` rows for patch-flattened images
    (``image_grid_thw`` says how many rows each image has)."""
    pixels = inputs["pixel_values"]
    if "image_grid_thw" in inputs:
        return list(pixels.split(inputs["image_grid_thw"].prod(-1).tolist()))
    return list(pixels)


def diffuse(x: torch.Tensor, t: int, abar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``sqrt(abar_t) x + sqrt(1 - abar_t) eps``; a tiled image is noised tile after tile."""
    if x.dim() == 4:  # (tiles, C, H, W): batch padding adds tiles at the end, never shifts the stream
        eps = torch.stack([torch.randn(tile.shape, generator=generator, dtype=torch.float64) for tile in x])
    else:
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    a = abar[t].item()
    return (math.sqrt(a) * x.double() + math.sqrt(1 - a) * eps).to(x.dtype)


@dataclass
class VCDCombiner(LogitCombiner):
    """Visual contrastive decoding: contrast with a branch that sees a diffusion-noised image."""

    name = "vcd"
    uses_layer = False
    noop_params = {"alpha": 0.0}  # z(v) inside the cut: the top token always survives it
    alpha: float = 1.0  # a in (1 + a) z(v) - a z(v')
    beta: float = 0.1  # plausibility cutoff relative to the top p(. | v); 0 keeps all (run script: 0.2)
    noise_step: int = 500  # t, counted from 0
    steps: int = 1000  # T
    schedule: Literal["sigmoid", "linear"] = "sigmoid"  # sigmoid: the authors' code
    seed: int = 0  # noise seed; each sample's generator also hashes its id

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if not 0 <= self.noise_step < self.steps:
            raise ValueError(f"noise_step: {self.noise_step} is outside 0..{self.steps - 1}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta: {self.beta} is outside 0..1")
        if self.alpha < 0:
            raise ValueError(f"alpha: {self.alpha} must be >= 0")
        self._abar = alpha_bar(self.steps, self.schedule)

    def needs(self) -> Needs:
        return Needs(branches=frozenset({Branch(BRANCH, self.noisy_inputs)}))

    def noisy_inputs(self, inputs: Any, samples: list[Sample], adapter: BranchAdapter) -> Any:
        """The main batch with each sample's images diffused, seeded per sample."""
        out = type(inputs)(dict(inputs))
        if "pixel_values" not in inputs:
            return out
        images = image_pixels(inputs)
        owners = [b for b, s in enumerate(samples) for _ in s.images]  # batch image -> sample
        if len(owners) != len(images):
            raise ValueError(f"vcd: {len(images)} images in the batch, {len(owners)} in the samples")
        generators = sample_generators(self.seed, [s.id for s in samples], stream=NOISE_STREAM)
        noisy = [diffuse(x.cpu(), self.noise_step, self._abar, generators[b]) for x, b in zip(images, owners)]
        pixels = inputs["pixel_values"]
        out["pixel_values"] = (torch.cat(noisy) if "image_grid_thw" in inputs else torch.stack(noisy)).to(pixels.device)
        return out

    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        z = view.logits  # (B, V) z(v)
        z_noisy = view.branch_logits(BRANCH)  # (B, V) z(v')
        contrast = (1 + self.alpha) * z - self.alpha * z_noisy
        return contrast.masked_fill(~relative_top(z, self.beta), float("-inf"))  # p(t | v) >= beta max p(. | v)


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(VCDCombiner)
