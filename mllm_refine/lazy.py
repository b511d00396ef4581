"""torch and transformers, imported on first use.

Listing plugins, recipes and a recipe's resolved form (``mllm-refine plugins``, ``recipe list``,
``recipe show``) imports every plugin module, so a plugin module that imports torch at its top
makes each of those commands wait seconds for a library it never calls. Modules whose classes are
registered write ``from mllm_refine.lazy import torch`` instead of ``import torch``: the name is
the real module for type checkers and behaves as it at run time, and the import happens at the
first attribute read (a tensor op, a dtype, ``torch.Tensor`` in an ``isinstance``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

__all__ = ["F", "lazy_factory", "nn", "torch", "transformers"]


class LazyModule(ModuleType):
    """A stand-in for the module ``name`` that imports it when an attribute is first read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lazy_target: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._lazy_target is None:
            target = importlib.import_module(self.__name__)
            # Later reads of the names the module has now find them here, at a plain module
            # attribute's cost (the per-token path reads torch.* often); names it gains later
            # still come through __getattr__.
            self.__dict__.update(vars(target))
            self._lazy_target = target
        return self._lazy_target

    def __getattr__(self, attr: str) -> Any:  # only reached for names not set on the stand-in
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self._lazy_target is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_factory(target: str, summary: str) -> Callable[..., Any]:
    """A factory for ``register(name, factory)`` that imports ``target`` (``"module:attr"``) at its
    first call and returns ``attr(*args, **kwargs)``; ``summary`` is what ``mllm-refine plugins``
    shows for it. For parts whose module needs torch at import (a ``torchmetrics.Metric``)."""
    module, _, attr = target.partition(":")

    def factory(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    factory.__name__ = factory.__qualname__ = attr
    factory.__doc__ = summary
    factory.__module__ = module
    return factory


if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    import transformers
    from torch import nn
else:
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")
    F = LazyModule("torch.nn.functional")
    transformers = LazyModule("transformers")
