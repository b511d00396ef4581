"""The base every decoding part derives from.

A component is a dataclass: its fields are its recipe parameters (typed, with defaults).
``setup`` binds it to a model (resolving depth-dependent defaults) before any decoding.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from mllm_refine.components.needs import Needs


@dataclass(frozen=True)
class ModelInfo:
    """The shape of the language model a component is bound to."""

    num_layers: int  # L decoder blocks
    num_heads: int  # H query heads per block
    num_kv_heads: int
    hidden_size: int  # D
    vocab_size: int  # V
    family: str  # adapter name, e.g. "llava"
    tied_embeddings: bool = False  # lm_head shares the input embedding's weight (h_0's lens echoes the input)


class Component(ABC):
    """A decoding part. Subclasses set ``name`` and are ``@dataclass``es."""

    name: ClassVar[str]
    kind: ClassVar[str]  # set by each interface: "layer_selector", "head_filter", ...
    # Parameters under which this part leaves greedy tokens exactly as vanilla decoding
    # (e.g. ``{"gamma": 1.0}``), checked by ``mllm_refine.testing.conformance``; None: not declared.
    # A LayerSelector is checked beside a combiner that ignores its choice, so ``{}`` fits it.
    noop_params: ClassVar[dict[str, Any] | None] = None

    def setup(self, info: ModelInfo) -> None:
        """Bind to a model; raise ``ValueError("<param>: <reason>")`` on an impossible setting."""
        self.info = info

    def needs(self) -> Needs:
        """What the engine must capture for this part (after ``setup``)."""
        return Needs()

    def conflicts(self, parts: Any) -> str | None:
        """Why this part cannot work beside the other parts of a recipe (a ``Parts``), or None."""
        return None

    @property
    def state_key(self) -> str:
        """This part's entry in a request's ``state`` (one per part instance): where it keeps what
        it found during the request, so nothing of one request survives into the next."""
        return f"{self.name}:{id(self)}"

    def report(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Per-sample choices of the request whose ``state`` (``StepView.state``,
        ``AttentionRow.state``) is given, e.g. ``{"heads": [[...], ...]}`` (lists of length B).
        Reads the state; never changes it or the part."""
        return {}

    @classmethod
    def params(cls) -> list[dataclasses.Field[Any]]:
        """The recipe parameters: the dataclass fields."""
        return [f for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else []

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


def resolve_layers(layers: list[int], num_layers: int, param: str, lowest: int = 1) -> list[int]:
    """Map layer numbers (negative counts from the last block) into ``lowest..L``; reject the rest."""
    out = []
    for layer in layers:
        resolved = layer + num_layers + 1 if layer < 0 else layer
        if not lowest <= resolved <= num_layers:
            raise ValueError(f"{param}: layer {layer} is outside {lowest}..{num_layers} of this model")
        out.append(resolved)
    return sorted(set(out))
