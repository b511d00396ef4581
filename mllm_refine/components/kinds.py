"""The four kinds of decoding part, declared once: the recipe keys, the registry's kinds, the
``Parts`` fields, the reference's sections and the run checks all read ``PART_KINDS``."""

from __future__ import annotations

from dataclasses import dataclass

from mllm_refine.components.base import Component
from mllm_refine.components.head_filter import HeadFilter
from mllm_refine.components.input_refiner import InputRefiner
from mllm_refine.components.layer_selector import LayerSelector
from mllm_refine.components.logit_combiner import LogitCombiner


@dataclass(frozen=True)
class PartKind:
    key: str  # the recipe key, also the ``Parts`` field
    interface: type[Component]
    many: bool  # a list of parts under ``key``, or at most one
    title: str  # the reference's section title
    role: str  # what a part of this kind does, completing "`key:` ..."

    @property
    def kind(self) -> str:
        """The interface's own ``kind``: what the registry files its parts under."""
        return self.interface.kind

    @property
    def intro(self) -> str:
        return f"`{self.key}:`{' (a list)' if self.many else ''} {self.role}."


# In the order a recipe lists them, parts are set up and the reference shows them.
PART_KINDS: tuple[PartKind, ...] = (
    PartKind("layer_selector", LayerSelector, False, "Layer selectors",
             "picks a layer per sample and step"),
    PartKind("head_filters", HeadFilter, True, "Head filters",
             "act inside attention of the current row"),
    PartKind("logit_combiner", LogitCombiner, False, "Logit combiners",
             "turns the final logits (and a selected layer) into the step's logits"),
    PartKind("input_refiners", InputRefiner, True, "Input refiners",
             "rewrite samples before decoding"),
)  # fmt: skip

KINDS: dict[str, type[Component]] = {k.kind: k.interface for k in PART_KINDS}
PART_KEYS: tuple[str, ...] = tuple(k.key for k in PART_KINDS)
