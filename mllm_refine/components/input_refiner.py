"""InputRefiner: changes what the model sees before decoding (a crop, a noisy copy, a branch)."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

from mllm_refine.components.base import Component

if TYPE_CHECKING:
    from mllm_refine.data.sample import Sample
    from mllm_refine.engine.decoder import Decoder


class InputRefiner(Component):
    """Rewrites a batch of samples before the answer pass.

    ``refine`` may run extra passes through ``decoder`` (e.g. ``decoder.prefill_rows``) batched
    over the samples, and returns new samples (e.g. with ``[image, crop]`` as images). What it
    chose per sample (a box, a map) goes in ``Sample.meta`` and ends up in the predictions.
    """

    kind: ClassVar[str] = "input_refiner"

    @abstractmethod
    def refine(self, samples: list["Sample"], decoder: "Decoder") -> list["Sample"]:
        """The samples to answer, one per input sample, in order."""
