"""Plugin discovery: one pluggy manager, fed by the ``mllm_refine`` entry-point group.

Environment controls (comma-separated entry-point names):
  MLLM_REFINE_PLUGINS        load only these plugins (allow-list)
  MLLM_REFINE_BLOCK_PLUGINS  never load these plugins
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from mllm_refine import hookspecs

ENTRY_POINT_GROUP = "mllm_refine"
ALLOW_ENV = "MLLM_REFINE_PLUGINS"
BLOCK_ENV = "MLLM_REFINE_BLOCK_PLUGINS"

_pm: pluggy.PluginManager | None = None
_registry: "Registry | None" = None
_distributions: dict[str, str] = {}  # plugin name -> distribution that provides it


def _names(env: str) -> list[str]:
    return [n.strip() for n in os.environ.get(env, "").split(",") if n.strip()]


class PluginError(RuntimeError):
    """A plugin failed or conflicted; the message names the plugin and the hook."""


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every allowed entry-point plugin loaded."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("mllm_refine")
        pm.add_hookspecs(hookspecs)
        allowed, blocked = set(_names(ALLOW_ENV)), set(_names(BLOCK_ENV))
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or (allowed and ep.name not in allowed) or pm.get_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
            try:
                plugin = ep.load()
            except Exception as e:
                raise PluginError(f"plugin {ep.name!r} ({dist}) failed to load: {type(e).__name__}: {e}") from e
            pm.register(plugin, name=ep.name)
            _distributions[ep.name] = dist
        for name in blocked:
            pm.set_blocked(name)
        pm.check_pending()
        _pm = pm
    return _pm


def distribution_of(plugin_name: str) -> str:
    return _distributions.get(plugin_name, "(registered at run time)")


@dataclass(frozen=True)
class Entry:
    """One registered thing and where it came from."""

    name: str
    obj: Any
    kind: str  # "layer_selector" | "head_filter" | ... | "adapter" | "dataset" | "model" | "metric"
    plugin: str
    distribution: str


class Registry:
    """Everything the plugins registered, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.entries: dict[str, dict[str, Entry]] = {}
        for hook_name, key in (
            ("register_components", None),
            ("register_adapters", "adapter"),
            ("register_datasets", "dataset"),
            ("register_models", "model"),
            ("register_metrics", "metric"),
        ):
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                dist = distribution_of(plugin)
                register = self._register_fn(key, plugin, dist, hook_name)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as e:
                    raise PluginError(f"plugin {plugin!r} ({dist}) failed in hook {hook_name}: {e}") from e

    def _register_fn(self, key: str | None, plugin: str, dist: str, hook: str) -> Callable[..., None]:
        def register(*args: Any) -> None:
            if key is None or key == "adapter":
                (obj,) = args
                name = obj.name
                kind = obj.kind if key is None else key
            else:
                name, obj = args
                kind = key
            table = self.entries.setdefault(kind, {})
            if name in table:
                old = table[name]
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by plugin {old.plugin!r} ({old.distribution}) "
                    f"and by plugin {plugin!r} ({dist}) in hook {hook}"
                )
            table[name] = Entry(name, obj, kind, plugin, dist)

        return register

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


def get_registry(refresh: bool = False) -> Registry:
    """The registry built from the plugin manager; ``refresh`` rebuilds it after (un)registering."""
    global _registry
    if _registry is None or refresh:
        _registry = Registry(get_plugin_manager())
    return _registry
