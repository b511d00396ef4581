"""Parts: the components of one recipe, checked to fit together."""

from __future__ import annotations

from dataclasses import dataclass, field

from mllm_refine.components import (
    PART_KINDS,
    Component,
    HeadFilter,
    InputRefiner,
    LayerSelector,
    LogitCombiner,
    ModelInfo,
    Needs,
)  # fmt: skip


class ConflictError(ValueError):
    """Two parts cannot be used together; the message says why."""


class SetupError(ValueError):
    """A part's setting does not fit the model: ``"<recipe key>.<param>: <reason>"``."""


@dataclass
class Parts:
    layer_selector: LayerSelector | None = None
    head_filters: list[HeadFilter] = field(default_factory=list)
    logit_combiner: LogitCombiner | None = None
    input_refiners: list[InputRefiner] = field(default_factory=list)

    def keyed(self) -> list[tuple[str, Component]]:
        """``(recipe key, part)`` of every part, e.g. ``("head_filters[1]", filter)``, in recipe order."""
        out: list[tuple[str, Component]] = []
        for k in PART_KINDS:
            value = getattr(self, k.key)
            if k.many:
                out += [(f"{k.key}[{i}]", p) for i, p in enumerate(value)]
            elif value is not None:
                out.append((k.key, value))
        return out

    def components(self) -> list[Component]:
        return [p for _, p in self.keyed()]

    @property
    def empty(self) -> bool:
        return not self.components()

    def check(self) -> None:
        """Refuse stacks that cannot work, before any model is loaded."""
        c = self.logit_combiner
        if c is not None and c.uses_layer and self.layer_selector is None:
            raise ConflictError(f"logit_combiner {c.name!r} contrasts with a selected layer: add a layer_selector")
        if self.layer_selector is not None and (c is None or not c.uses_layer):
            raise ConflictError(
                f"layer_selector {self.layer_selector.name!r} chooses a layer that no logit_combiner uses: "
                "add a logit_combiner that uses a layer"
            )
        for part in self.components():
            reason = part.conflicts(self)
            if reason:
                raise ConflictError(f"{part.kind} {part.name!r}: {reason}")

    def setup(self, info: ModelInfo) -> Needs:
        """Bind every part to the model and return the union of what they need captured."""
        needs = Needs()
        for key, part in self.keyed():
            try:
                part.setup(info)
            except ValueError as e:
                raise SetupError(f"{key}.{e}") from e
            needs = needs | part.needs()
        if self.layer_selector is not None and self.logit_combiner is not None and self.logit_combiner.uses_layer:
            # The combiner reads the lens of whichever candidate the selector picks.
            needs = needs | Needs(hidden=frozenset(self.layer_selector.candidates()))
        return needs
