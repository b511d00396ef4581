"""Hook specifications: how a plugin adds parts to mllm-refine.

Each hook receives a ``register`` callback; a plugin calls it once per thing it adds.
Built-in parts use these same hooks through the ``mllm_refine`` entry-point group.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("mllm_refine")
hookimpl = pluggy.HookimplMarker("mllm_refine")


@hookspec
def register_components(register: Callable[[type], None]) -> None:
    """Register decoding components: ``register(cls)`` for each subclass of
    ``LayerSelector``, ``HeadFilter``, ``LogitCombiner`` or ``InputRefiner``. Since 0.1."""


@hookspec
def register_adapters(register: Callable[[type], None]) -> None:
    """Register model adapters: ``register(cls)`` for each ``ModelAdapter`` subclass. Since 0.1."""


@hookspec
def register_datasets(register: Callable[[str, Callable], None]) -> None:
    """Register datasets: ``register(name, factory)``; ``factory(**params)`` returns a
    sequence of ``Sample``. Since 0.1."""


@hookspec
def register_models(register: Callable[[str, Callable], None]) -> None:
    """Register named models: ``register(name, factory)``; ``factory(dtype)`` returns
    ``(model, processor)``. A recipe's ``model.path`` may name one. Since 0.1."""


@hookspec
def register_metrics(register: Callable[[str, Callable], None]) -> None:
    """Register metrics: ``register(name, factory)``; ``factory()`` returns a
    ``torchmetrics.Metric`` updated with ``(predictions, references)``. Since 0.1."""
