"""InputRefiner: changes what the model sees before decoding (a crop, a noisy copy, a branch).

A refiner looks at the model through a ``RefineContext`` (the engine's ``Decoder`` implements
it): extra forward passes over a batch of samples, each a ``PrefillView`` of the last prompt
token's attention rows, its logits and the batch it ran on.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

from mllm_refine.components.base import Component, ModelInfo
from mllm_refine.data.sample import Sample
from mllm_refine.lazy import torch


@runtime_checkable
class PrefillView(Protocol):
    """One extra forward over a batch of ``B`` samples."""

    inputs: Any  # the prepared batch; ``pixel_values`` holds ``.grad`` after a backward of a pixel_grad pass
    logits: torch.Tensor | None  # (B, V) at the last prompt position, float32 or wider; None for a rows-only pass
    rows: dict[int, torch.Tensor]  # block -> (B, H, K): the last prompt token's post-softmax attention
    image_slots: torch.Tensor  # (B, I) bool: slots that hold an image token of the sample

    def image_rows(self, layer: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, I)``: the row of block ``layer`` (or ``rows`` of the same shape, e.g. its
        gradient) at each sample's image tokens, zero in padding slots."""
        ...

    def image_grids(self) -> list[list[tuple[int, int]]]:
        """Per sample, the ``(rows, cols)`` grid of each block of its image tokens, in token
        order (laid out as ``ModelAdapter.image_grid`` says)."""
        ...

    @property
    def row_end_tokens(self) -> tuple[int, ...]:
        """Per grid of one image, the extra tokens that end each of its rows (LLaVA-NeXT's newline)."""
        ...


@runtime_checkable
class RefineContext(Protocol):
    """What a refiner may use: the model's shape, its vision config and extra passes."""

    @property
    def info(self) -> ModelInfo:
        """The language model's shape and family."""
        ...

    @property
    def vision_config(self) -> Any:
        """The model's vision config (``image_size``, ``patch_size``, ``spatial_merge_size``)."""
        ...

    def prefill(
        self, samples: list[Sample], layers: list[int], *, grad: bool = False, pixel_grad: bool = False, logits: bool = True
    ) -> PrefillView:
        """One batched forward over ``samples`` keeping the last prompt row of blocks ``layers``.

        ``grad``: each kept row is an autograd leaf whose output the block recomputes, so
        ``torch.autograd.grad(v, view.rows[l])`` is ``dv/dA_l``; ``pixel_grad``: ``pixel_values``
        requires grad. Either records the graph (backpropagate from ``logits``); otherwise nothing
        is recorded. ``logits=False``: only rows are wanted; the forward ends after ``max(layers)``.
        """
        ...


class InputRefiner(Component):
    """Rewrites a batch of samples before the answer pass.

    ``refine`` may run extra passes through ``context.prefill`` batched over the samples, and
    returns new samples (e.g. with ``[image, crop]`` as images). What it chose per sample (a
    box, a map) goes in ``Sample.meta`` and ends up in the predictions.
    """

    kind: ClassVar[str] = "input_refiner"

    @abstractmethod
    def refine(self, samples: list[Sample], context: RefineContext) -> list[Sample]:
        """The samples to answer, one per input sample, in order."""
