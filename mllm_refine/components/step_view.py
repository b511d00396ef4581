"""StepView: what a part may read at one decoding step, as a Protocol the engine implements
(``mllm_refine.engine.step_view.StepView``). Parts type against this one, never the engine's class.

Layers are numbered as in ``Needs``: 0 is the embedding output, ``l`` in 1..L is block ``l``.
Reading something no part declared in ``needs()`` raises ``KeyError`` naming the declaration.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mllm_refine.lazy import torch


@runtime_checkable
class StepView(Protocol):
    step: int  # 0 at prefill (it yields the first new token), then 1, 2, ...
    logits: torch.Tensor  # (B, V) float32: the model's own final logits z_N
    num_layers: int  # L

    @property
    def state(self) -> dict[str, Any]:
        """Per-request scratch shared by all parts (e.g. findings of the prefill)."""
        ...

    @property
    def image_mask(self) -> torch.Tensor:
        """``(B, I)`` bool: which image slots hold a real image token of each sample."""
        ...

    @property
    def no_image(self) -> torch.Tensor | None:
        """``(B,)`` bool: the samples without an image token; None when every sample has one
        (known once per request, so a step need not ask)."""
        ...

    @property
    def image_token_ids(self) -> tuple[int, ...]:
        """The model's image placeholder token ids (never emitted)."""
        ...

    def attention(self, layer: int, renormalize: bool = True) -> torch.Tensor:
        """``(B, H, I)``: the current row's attention over each sample's image tokens in block
        ``layer`` (``Needs.attention``), renormalised over the image span by default."""
        ...

    def attentions(self, layers: list[int], renormalize: bool = True) -> torch.Tensor:
        """``(B, N, H, I)``: ``attention(l)`` of each of the N ``layers``."""
        ...

    def branch_logits(self, name: str) -> torch.Tensor:
        """``(B, V)``: this step's final logits of the extra input ``name`` (``Needs.branches``)."""
        ...

    def prefill_row(self, layer: int) -> torch.Tensor:
        """``(B, H, T)``: the last prompt token's attention over the prompt in block ``layer``."""
        ...

    def scores(self, layer: int) -> torch.Tensor:
        """``(B, H, K)``: the current row's pre-softmax scores in block ``layer``, before filters."""
        ...

    def hidden(self, layer: int) -> torch.Tensor:
        """``(B, D)``: the residual stream ``h_layer`` at the current position (``Needs.hidden``)."""
        ...

    def lens(self, layer: int, final_norm: bool = True) -> torch.Tensor:
        """``(B, V)``: the logit lens ``lm_head(norm(h_layer))`` (no norm with ``final_norm=False``)."""
        ...

    def lenses(self, layers: list[int], final_norm: bool = True) -> torch.Tensor:
        """``(B, N, V)``: ``lens(l)`` of each of the N ``layers``."""
        ...

    def lens_at(self, layers: torch.Tensor, final_norm: bool = True, fill: bool = True) -> torch.Tensor:
        """``(B, V)``: each sample's lens at its own layer ``layers[b]``; ``-1`` rows hold ``logits``
        (``fill=False``: any finite row, for a caller that replaces those rows itself)."""
        ...
