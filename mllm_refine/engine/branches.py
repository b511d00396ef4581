"""Branches: extra inputs decoded in lockstep with the answer (``Needs.branches``).

Each branch keeps its own model kwargs and KV cache. At every step of ``generate`` the logits
processor calls ``BranchRunner.step`` before the parts run: at step 0 each branch prefills its
own prompt, later it is fed the token the main pass chose at the step before. Positions, masks
and caches advance with transformers' own generation helpers, so a branch whose inputs equal the
main ones reproduces the main logits. The main request's probes and filters are paused meanwhile; the logits land in
``Capture.branch_logits`` for ``StepView.branch_logits``.
A branch builds its batch from the main one and the samples, through the adapter
(``components.branch.BranchAdapter``: e.g. ``without_images``, PAI's image-free prompts).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.compat import cache_kwarg
from mllm_refine.components.branch import Branch
from mllm_refine.data.sample import Sample
from mllm_refine.engine.kv_cache import growing_cache
from mllm_refine.engine.prefill import forward_kwargs
from mllm_refine.lazy import torch, transformers

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


class BranchRunner:
    """Runs every declared branch one forward per step, with its own cache."""

    def __init__(
        self,
        model: Any,  # a transformers model
        adapter: ModelAdapter,
        branches: list[Branch],
        inputs: Any,
        samples: list[Sample],
        capture: Capture | None = None,
        new_tokens: int = 0,
    ) -> None:
        """``new_tokens``: the answer length to make room for in each branch's cache."""
        self.model: Any = model  # a transformers model: submodules, config and generation helpers are read by name
        self.capture = capture
        self.ids: dict[str, torch.Tensor] = {}  # name -> (B, T_branch) prompt ids
        self.kwargs: dict[str, dict[str, Any]] = {}
        self.prompt_length = inputs["input_ids"].shape[1]
        self.forwards = 0  # branch forwards run, for tests and reports
        for b in branches:
            branch_inputs = b.inputs(inputs, samples, adapter)
            kwargs = forward_kwargs(model, branch_inputs)
            self.ids[b.name] = kwargs.pop("input_ids")
            cache = growing_cache(adapter.text_config, self.ids[b.name].shape[1], new_tokens)
            kwargs[cache_kwarg()] = cache or transformers.DynamicCache(config=self.model.config)
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


__all__ = ["BranchRunner", "check_branches"]
