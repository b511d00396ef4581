"""Plugin discovery: one pluggy manager, fed by the ``mllm_refine`` entry-point group.

Environment controls (they act on optional plugins; the core ones, ``CORE_PLUGINS``, always load):
  MLLM_REFINE_PLUGINS        comma-separated entry-point names: load only these (allow-list)
  MLLM_REFINE_BLOCK_PLUGINS  comma-separated entry-point names: never load these
  MLLM_REFINE_TRACE=1        write every hook call, the plugin that answered and what it
                             registered to stderr (pluggy's tracing)
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from mllm_refine import hookspecs

ENTRY_POINT_GROUP = "mllm_refine"
ALLOW_ENV = "MLLM_REFINE_PLUGINS"
BLOCK_ENV = "MLLM_REFINE_BLOCK_PLUGINS"
TRACE_ENV = "MLLM_REFINE_TRACE"

# mllm-refine's own model families, datasets, metrics and named models: what every run stands on,
# so the allow- and block-lists (meant to choose methods or settle a name clash) leave them be.
CORE_DISTRIBUTION = "mllm-refine"
CORE_PLUGINS = frozenset({"adapters", "datasets", "metrics", "embedded", "tiny_models"})

# hook -> registry kind; None: the component's own ``kind`` (layer_selector, head_filter, ...).
HOOK_KINDS: dict[str, str | None] = {
    "register_components": None,
    "register_adapters": "adapter",
    "register_datasets": "dataset",
    "register_models": "model",
    "register_metrics": "metric",
    "register_recipes": "recipe",
}

_pm: pluggy.PluginManager | None = None
_registry: "Registry | None" = None
_distributions: dict[str, str] = {}  # plugin name -> distribution that provides it


def _names(env: str) -> list[str]:
    return [n.strip() for n in os.environ.get(env, "").split(",") if n.strip()]


class PluginError(RuntimeError):
    """A plugin failed or conflicted; the message names the plugin and the hook."""


def _tracing_on() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _write_trace(message: str) -> None:
    sys.stderr.write("".join(f"mllm-refine trace: {line}" for line in message.splitlines(keepends=True)))


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every allowed entry-point plugin loaded."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("mllm_refine")
        pm.add_hookspecs(hookspecs)
        if _tracing_on():
            pm.trace.root.setwriter(_write_trace)
            pm.enable_tracing()
        allowed, blocked = set(_names(ALLOW_ENV)), set(_names(BLOCK_ENV))
        for name in sorted(blocked & CORE_PLUGINS):
            sys.stderr.write(f"mllm-refine: {BLOCK_ENV}: {name!r} is a core plugin and always loads\n")
        blocked -= CORE_PLUGINS
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            core = is_core(ep.name, dist)
            if pm.get_plugin(ep.name) or (not core and (ep.name in blocked or (allowed and ep.name not in allowed))):
                continue
            try:
                plugin = ep.load()
            except Exception as e:
                raise PluginError(f"plugin {ep.name!r} ({dist}) failed to load: {type(e).__name__}: {e}") from e
            try:
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as e:
                raise PluginError(f"plugin {ep.name!r} ({dist}): {e}") from e
            _distributions[ep.name] = dist
        for name in blocked:
            pm.set_blocked(name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as e:
            name = pm.get_name(e.plugin) or repr(e.plugin)
            raise PluginError(f"plugin {name!r} ({distribution_of(name)}): {e}") from e
        _pm = pm
    return _pm


def is_core(plugin_name: str, distribution: str) -> bool:
    """Whether a plugin is one of mllm-refine's own core plugins (never blocked)."""
    return plugin_name in CORE_PLUGINS and distribution == CORE_DISTRIBUTION


def distribution_of(plugin_name: str) -> str:
    return _distributions.get(plugin_name, "registered at run time")


@dataclass(frozen=True)
class Entry:
    """One registered thing and where it came from."""

    name: str
    obj: Any
    kind: str  # "layer_selector" | "head_filter" | ... | "adapter" | "dataset" | "model" | "metric" | "recipe"
    plugin: str
    distribution: str


def _check_registered(hook: str, args: tuple[Any, ...]) -> tuple[str, str, Any]:
    """``(kind, name, obj)`` of one ``register(...)`` call; ``ValueError`` says what is wrong."""
    key = HOOK_KINDS[hook]
    if key is None or key == "adapter":
        if len(args) != 1:
            raise ValueError(f"register() takes one class, got {len(args)} arguments")
        (obj,) = args
        if key is None:
            from mllm_refine.components import KINDS

            bases = tuple(KINDS.values())
            if not (isinstance(obj, type) and issubclass(obj, bases)):
                raise ValueError(f"{obj!r} is not a subclass of {', '.join(b.__name__ for b in bases)}")
            if not dataclasses.is_dataclass(obj):
                raise ValueError(f"{obj.__name__} is not a @dataclass (its fields are its recipe parameters)")
        else:
            from mllm_refine.adapters.base import ModelAdapter

            if not (isinstance(obj, type) and issubclass(obj, ModelAdapter)):
                raise ValueError(f"{obj!r} is not a subclass of ModelAdapter")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{obj.__name__} has no `name` class attribute")
        return (obj.kind if key is None else key), name, obj
    if len(args) != 2 or not isinstance(args[0], str) or not args[0]:
        raise ValueError(f"register() takes (name, {'path' if key == 'recipe' else 'factory'}), got {args!r}")
    name, obj = args
    if key == "recipe":
        if not Path(obj).is_file():
            raise ValueError(f"recipe {name!r}: file not found: {obj}")
        obj = Path(obj)
    elif not callable(obj):
        raise ValueError(f"{key} {name!r}: factory {obj!r} is not callable")
    return key, name, obj


class Registry:
    """Everything the plugins registered, by kind and name.

    Each plugin's hook is called on its own (through pluggy, so tracing sees it) with a
    ``register`` callback that knows the plugin: errors and conflicts name both.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.entries: dict[str, dict[str, Entry]] = {}
        self._trace = pm.trace.root.get("registry")
        for hook in HOOK_KINDS:
            impls = getattr(pm.hook, hook).get_hookimpls()
            for impl in impls:
                plugin, dist = impl.plugin_name, distribution_of(impl.plugin_name)
                caller = pm.subset_hook_caller(hook, [i.plugin for i in impls if i is not impl])
                try:
                    caller(register=_Register(self, plugin, dist, hook))
                except PluginError:
                    raise
                except Exception as e:
                    raise PluginError(
                        f"plugin {plugin!r} ({dist}) failed in hook {hook}: {type(e).__name__}: {e}"
                    ) from e

    def add(self, hook: str, plugin: str, dist: str, args: tuple[Any, ...]) -> None:
        try:
            kind, name, obj = _check_registered(hook, args)
        except ValueError as e:
            raise PluginError(f"plugin {plugin!r} ({dist}) in hook {hook}: {e}") from None
        table = self.entries.setdefault(kind, {})
        if name in table:
            old = table[name]
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {old.plugin!r} ({old.distribution}) "
                f"and by plugin {plugin!r} ({dist}) in hook {hook}; block one with {BLOCK_ENV}"
            )
        table[name] = Entry(name, obj, kind, plugin, dist)
        self._trace(f"plugin {plugin!r} ({dist}) registered {kind} {name!r}")

    def get(self, kind: str, name: str) -> Entry:
        table = self.entries.get(kind, {})
        if name not in table:
            choices = ", ".join(sorted(table)) or "none registered"
            raise KeyError(f"unknown {kind.replace('_', ' ')} {name!r}; choices: {choices}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def all(self) -> list[Entry]:
        return [e for table in self.entries.values() for e in table.values()]


class _Register:
    """The ``register`` callback handed to one plugin's hook; its repr shows up in traces."""

    def __init__(self, registry: Registry, plugin: str, dist: str, hook: str) -> None:
        self.registry, self.plugin, self.dist, self.hook = registry, plugin, dist, hook

    def __call__(self, *args: Any) -> None:
        self.registry.add(self.hook, self.plugin, self.dist, args)

    def __repr__(self) -> str:
        return f"<register for plugin {self.plugin!r} ({self.dist})>"


def get_registry(refresh: bool = False) -> Registry:
    """The registry built from the plugin manager; ``refresh`` rebuilds it after (un)registering."""
    global _registry
    if _registry is None or refresh:
        _registry = Registry(get_plugin_manager())
    return _registry
