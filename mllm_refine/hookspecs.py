"""Hook specifications: how a plugin adds parts to mllm-refine.

A plugin is a module (or object) with ``@hookimpl`` functions named like the specs below, found
through the ``mllm_refine`` entry-point group. Each hook receives a ``register`` callback; the
plugin calls it once per thing it adds. Built-in parts use these same hooks. An exception raised
inside a hook, or a bad registration, is reported as a ``PluginError`` naming the plugin and hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from mllm_refine.adapters.base import ModelAdapter
    from mllm_refine.components.base import Component

hookspec = pluggy.HookspecMarker("mllm_refine")
hookimpl = pluggy.HookimplMarker("mllm_refine")


@hookspec
def register_components(register: Callable[[type[Component]], None]) -> None:
    """Register decoding parts: ``register(cls)`` for each ``@dataclass`` subclass of
    ``LayerSelector``, ``HeadFilter``, ``LogitCombiner`` or ``InputRefiner``. Since 0.1."""


@hookspec
def register_adapters(register: Callable[[type[ModelAdapter]], None]) -> None:
    """Register model families: ``register(cls)`` for each ``ModelAdapter`` subclass. Since 0.1."""


@hookspec
def register_datasets(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register datasets: ``register(name, factory)``; ``factory(**params)`` returns a
    sequence of ``Sample`` (a recipe's ``data`` keys are its parameters). Since 0.1."""


@hookspec
def register_models(register: Callable[[str, Callable[..., tuple[Any, Any]]], None]) -> None:
    """Register named models: ``register(name, factory)``; ``factory(dtype=...)`` returns
    ``(model, processor)``. A recipe's ``model.path`` may name one. Since 0.1."""


@hookspec
def register_metrics(register: Callable[[str, Callable[[], Any]], None]) -> None:
    """Register metrics: ``register(name, factory)``; ``factory()`` returns a
    ``torchmetrics.Metric`` updated with ``(predictions, references)``. Since 0.1."""


@hookspec
def register_recipes(register: Callable[[str, Path], None]) -> None:
    """Register named recipe files: ``register(name, path)``; ``mllm-refine run NAME`` and
    ``extends: NAME`` find them. Since 0.1."""
