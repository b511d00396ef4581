"""Branches: extra inputs decoded in lockstep with the answer (``Needs.branches``).

Each branch keeps its own model kwargs and KV cache. At every step of ``generate`` the logits
processor calls ``BranchRunner.step`` before the parts run: at step 0 each branch prefills its
own prompt, later it is fed the token the main pass chose at the step before. Positions, masks
and caches advance with transformers' own generation helpers, so a branch whose inputs equal the
main ones reproduces the main logits. The main request's probes and filters are paused meanwhile; the logits land in
``Capture.branch_logits`` for ``StepView.branch_logits``.

``image_free`` builds a branch's batch without the images: either each main prompt with its
image markup removed (``strip``), or each sample's prompt rebuilt by the adapter with no image
(``template``). Both keep the batch's order and left padding, so a branch answer never depends
on its batch.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.compat import cache_kwarg
from mllm_refine.components.branch import Branch
from mllm_refine.data.sample import Sample
from mllm_refine.engine.prefill import forward_kwargs
from mllm_refine.lazy import nn, torch, transformers

if TYPE_CHECKING:
    from mllm_refine.engine.capture import Capture


def check_branches(branches: frozenset) -> list[Branch]:
    """The declared branches in name order; one name may not mean two different inputs."""
    by_name: dict[str, Branch] = {}
    for b in branches:
        if b.name in by_name and by_name[b.name].inputs != b.inputs:
            raise ValueError(f"branch {b.name!r} is declared twice with different inputs")
        by_name[b.name] = b
    return [by_name[n] for n in sorted(by_name)]


def image_markup(adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: image placeholder tokens and the tokens that wrap each image
    (an adapter's ``image_markup_attrs``, e.g. Qwen's vision start and end)."""
    config = adapter.model.config
    wrappers = [getattr(config, a, None) for a in getattr(adapter, "image_markup_attrs", ())]
    wrappers = [w for w in wrappers if w is not None]
    keys = adapter.image_keys(input_ids)
    if wrappers:
        keys = keys | torch.isin(input_ids, torch.tensor(wrappers, device=input_ids.device))
    return keys


def strip_images(inputs: Any, adapter: ModelAdapter) -> transformers.BatchFeature:
    """The batch with every image's markup tokens cut out of its prompts, left padded again.

    Every per-token tensor (``(B, T)`` like ``input_ids``, e.g. Qwen's ``mm_token_type_ids``)
    loses the same positions; image tensors (``pixel_values``, grids, sizes) are dropped.
    """
    ids = inputs["input_ids"]  # (B, T)
    B, T = ids.shape
    valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
    keep = valid & ~image_markup(adapter, ids)  # (B, T)
    lengths = keep.sum(1)  # (B,)
    width = max(int(lengths.max()), 1) if B else 0
    # Dropped positions first, kept ones last, each in prompt order: the last `width` columns
    # hold every kept token right-aligned, i.e. left padded.
    order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, T - width :]  # (B, W)
    slots = torch.arange(width, device=ids.device)[None] >= (width - lengths)[:, None]  # (B, W) real tokens
    pad = adapter.tokenizer.pad_token_id
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.items():
        if torch.is_tensor(value) and not value.is_floating_point() and tuple(value.shape) == (B, T):
            fill = (pad if pad is not None else 0) if key == "input_ids" else 0
            out[key] = torch.where(slots, value.gather(1, order), fill)  # (B, W)
    out["attention_mask"] = slots.to(inputs["attention_mask"].dtype if "attention_mask" in inputs else torch.long)
    return transformers.BatchFeature(out)


def image_free(
    inputs: Any, samples: list[Sample], adapter: ModelAdapter, prompt: Literal["strip", "template"] = "strip"
) -> transformers.BatchFeature:
    """The batch without images: ``strip`` cuts the image markup out of the main prompts;
    ``template`` asks the adapter for each sample's prompt with no image."""
    if prompt == "strip":
        return strip_images(inputs, adapter)
    if prompt == "template":
        device = inputs["input_ids"].device
        return adapter.prepare([dataclasses.replace(s, images=[]) for s in samples]).to(device)
    raise ValueError(f"prompt: {prompt!r} is not 'strip' or 'template'")


class BranchRunner:
    """Runs every declared branch one forward per step, with its own cache."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        branches: list[Branch],
        inputs: Any,
        samples: list[Sample],
        capture: Capture | None = None,
    ) -> None:
        self.model = model
        self.capture = capture
        self.ids: dict[str, torch.Tensor] = {}  # name -> (B, T_branch) prompt ids
        self.kwargs: dict[str, dict[str, Any]] = {}
        self.prompt_length = inputs["input_ids"].shape[1]
        self.forwards = 0  # branch forwards run, for tests and reports
        for b in branches:
            branch_inputs = b.inputs(inputs, samples, adapter)
            kwargs = forward_kwargs(model, branch_inputs)
            self.ids[b.name] = kwargs.pop("input_ids")
            kwargs[cache_kwarg()] = transformers.DynamicCache(config=model.config)
            kwargs["use_cache"] = True
            kwargs["logits_to_keep"] = 1
            self.kwargs[b.name] = kwargs

    def step(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B, V)}`` float32 logits of each branch at this step; ``input_ids`` is the
        main sequence so far, ``(B, T + step)``."""
        new = input_ids[:, self.prompt_length :]  # (B, step) tokens chosen so far
        out: dict[str, torch.Tensor] = {}
        for name, kwargs in self.kwargs.items():
            ids = torch.cat([self.ids[name], new.to(self.ids[name].device)], dim=1)  # (B, T_branch + step)
            first = new.shape[1] == 0
            model_inputs = self.model.prepare_inputs_for_generation(
                ids, next_sequence_length=None if first else 1, is_first_iteration=first, **kwargs
            )
            with torch.no_grad(), (self.capture.pause() if self.capture is not None else nullcontext()):
                result = self.model(**model_inputs, return_dict=True)
            self.forwards += 1
            self.kwargs[name] = self.model._update_model_kwargs_for_generation(result, kwargs)
            out[name] = result.logits[:, -1].float()  # (B, V)
        if self.capture is not None:
            self.capture.branch_logits = out
        return out


__all__ = ["BranchRunner", "check_branches", "image_free", "image_markup", "strip_images"]
