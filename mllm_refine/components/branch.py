"""Branch: an extra input decoded in lockstep with the answer, e.g. VCD's noisy image or PAI's
image-free prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol, runtime_checkable

from mllm_refine.data.sample import Sample
from mllm_refine.lazy import torch


@runtime_checkable
class BranchAdapter(Protocol):
    """What a branch builder may ask of the model's adapter."""

    def without_images(
        self, inputs: Mapping[str, torch.Tensor], samples: list[Sample], prompt: Literal["strip", "template"] = "strip"
    ) -> Any:
        """The batch with no images: ``strip`` cuts each prompt's image markup out (left padded
        again), ``template`` rebuilds each sample's prompt without its images."""
        ...


# (prepared main inputs, samples, adapter) -> the branch's model inputs (same batch, same order)
BranchInputs = Callable[[Any, list[Sample], BranchAdapter], Any]


@dataclass(frozen=True)
class Branch:
    """A second forward per step with its own inputs and KV cache; its logits reach the parts
    as ``StepView.branch_logits(name)``.

    ``inputs`` builds the branch's batch from the main one (e.g. noisy ``pixel_values``), or from
    the samples (``adapter.without_images``: the prompts without their images); its prompts
    may differ in length from the main ones. Each step the branch is fed the token the main pass
    chose. The recipe's probes and head filters act only in the main pass: the branch is what
    the model says without them.
    """

    name: str
    inputs: BranchInputs = field(compare=False, hash=False, repr=False)
