"""Recipes: YAML files that name a model, data, decoding settings and a stack of parts.

A recipe is read with ``yaml.SafeLoader`` only (``safe_yaml``: duplicate keys refused, aliases
bounded), overridden with ``key=value`` pairs (values parsed
as YAML scalars or lists), and checked against every component's typed parameters before any
model is loaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_refine.components import KINDS, PART_KINDS
from mllm_refine.engine.config import DecodeConfig
from mllm_refine.engine.parts import ConflictError, Parts
from mllm_refine.plugin_manager import get_registry
from mllm_refine.recipes import safe_yaml
from mllm_refine.recipes.compose import (
    Origins,
    drop_origins,
    find_recipe,
    is_name,
    origin_of,
    override_origins,
    read_yaml_node,
    resolve,
)
from mllm_refine.recipes.schema import RecipeError, build_dataclass, suggest

TOP_LEVEL = {
    "name": "recipe name, written into every prediction",
    "description": "free text",
    "model": "path (local folder, registered name or hub id), dtype, device, trust_remote_code",
    "data": "name (registered dataset, default manifest) and its parameters, e.g. path, limit",
    "decode": "max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty, stop, batch_size, seed",
    **{k.key: "list of components" if k.many else "one component: {name: ..., <params>}" for k in PART_KINDS},
    "metric": "registered metric name (default: the dataset's suggestion, else exact_match)",
    "trainer": "Lightning settings: accelerator, devices, num_nodes, strategy, precision, num_workers, enable_progress_bar",
    "sweep": "list of partial recipes, each merged over this one and run into its own folder",
}
MODEL_KEYS = {"path": str, "dtype": str, "device": str, "trust_remote_code": bool}


@dataclass
class Recipe:
    """A checked recipe: its source, resolved mapping, parts and decoding settings."""

    source: str
    raw: dict[str, Any]
    parts: Parts
    decode: DecodeConfig
    name: str = "recipe"
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metric: str = "exact_match"
    origins: dict[tuple[str | int, ...], str] = field(default_factory=dict)  # value path -> "file:line" | "override k=v"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.0.c=1.5"`` -> (["a", "b", "0", "c"], 1.5); the value is read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value")
    key, value = text.split("=", 1)
    if not key:
        raise RecipeError(f"override {text!r}: empty key")
    try:
        return key.split("."), safe_yaml.loads(value) if value.strip() else ""
    except safe_yaml.RecipeYAMLError as e:
        raise RecipeError(f"override {text!r}: the value is not YAML ({e})") from e


def apply_override(raw: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {text!r}: no item {part} in {'.'.join(path[:i]) or 'recipe'}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"override {text!r}: {'.'.join(path[:i])} is a value ({node!r}), not a section with keys")
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"override {text!r}: no item {last}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {text!r}: {'.'.join(path[:-1])} is a value ({node!r}), not a section with keys")


def read_yaml(path: str | Path) -> dict[str, Any]:
    return read_yaml_node(path)[0]


def _component(kind: str, spec: Any, where: str):
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise RecipeError(f"{where}: expected {{name: ..., <params>}}")
    registry = get_registry()
    names = registry.names(kind)
    if spec["name"] not in names:
        raise RecipeError(
            f"{where}.name: unknown {kind.replace('_', ' ')} {spec['name']!r}{suggest(str(spec['name']), names)}; "
            f"choices: {', '.join(names) or 'none installed'}"
        )
    cls = registry.get(kind, spec["name"]).obj
    return build_dataclass(cls, spec, where, skip=("name",))


def build(raw: dict[str, Any], source: str) -> Recipe:
    """Check a recipe mapping and build its parts; errors name ``source`` and the key."""
    for key in raw:
        if key not in TOP_LEVEL:
            raise RecipeError(f"{source}: {key}: unknown key{suggest(key, list(TOP_LEVEL))}; valid: {', '.join(TOP_LEVEL)}")
    parts = Parts()
    for k in PART_KINDS:
        if not k.many:
            if raw.get(k.key) is not None:
                setattr(parts, k.key, _component(k.kind, raw[k.key], f"{source}: {k.key}"))
            continue
        specs = raw.get(k.key) or []
        if not isinstance(specs, list):
            raise RecipeError(f"{source}: {k.key}: expected a list of components")
        setattr(parts, k.key, [_component(k.kind, s, f"{source}: {k.key}[{i}]") for i, s in enumerate(specs)])
    try:
        parts.check()
    except ConflictError as e:
        raise RecipeError(f"{source}: {e}") from e
    decode_raw = raw.get("decode") or {}
    if not isinstance(decode_raw, dict):
        raise RecipeError(f"{source}: decode: expected a mapping")
    decode = build_dataclass(DecodeConfig, decode_raw, f"{source}: decode")
    try:
        decode.validate()
    except ValueError as e:
        raise RecipeError(f"{source}: decode.{e}") from e
    model = dict(raw.get("model") or {})
    for key, value in model.items():
        if key not in MODEL_KEYS:
            raise RecipeError(f"{source}: model.{key}: unknown key{suggest(key, list(MODEL_KEYS))}; valid: {', '.join(MODEL_KEYS)}")
        if not isinstance(value, MODEL_KEYS[key]):
            raise RecipeError(f"{source}: model.{key}: expected {MODEL_KEYS[key].__name__}, got {value!r}")
    if "path" not in model:
        raise RecipeError(f"{source}: model.path: missing (a local checkpoint folder, a registered model name or a hub id)")
    data = dict(raw.get("data") or {})
    return Recipe(
        source=source,
        raw=raw,
        parts=parts,
        decode=decode,
        name=str(raw.get("name") or Path(source).stem),
        model=model,
        data=data,
        metric=str(raw.get("metric") or "exact_match"),
    )


def resolve_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], Origins, Path]:
    """The recipe ``path`` (a file, or the name of a shipped or registered recipe) with what it
    ``extends`` merged in and ``overrides`` applied, each value's origin, and the file read."""
    file = Path(path)
    if not file.is_file() and is_name(str(path)):
        file = find_recipe(str(path), None, "recipe")
    raw, origins = resolve(file)
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        if _switches(raw, keys, value):
            # A new name switches a block (the data, a part) as ``extends`` does: the recipe's
            # keys of the block go; keys other overrides set stay, whatever their order.
            block, where = _node(raw, keys[:-1]), _key(raw, keys[:-1])
            for k in [k for k in block if not origin_of(origins, (*where, k)).startswith("override ")]:
                del block[k]
                drop_origins(origins, (*where, k))
        apply_override(raw, keys, value, text)
        override_origins(raw, keys, text, origins)
    return raw, origins, file


def _node(raw: dict[str, Any] | list[Any], path: list[str]) -> Any:
    """The value at dotted ``path`` (list items by number), or None where there is none."""
    node: Any = raw
    for part in path:
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _key(raw: dict[str, Any], path: list[str]) -> tuple[str | int, ...]:
    """``path`` as an origins key (list items as ints)."""
    key: list[str | int] = []
    node: Any = raw
    for part in path:
        key.append(int(part) if isinstance(node, list) else part)
        node = _node(node, [part]) if isinstance(node, (dict, list)) else None
    return tuple(key)


def _switches(raw: dict[str, Any], keys: list[str], value: Any) -> bool:
    """``keys`` is a block's ``name`` (not the recipe's own) and ``value`` names another one."""
    if len(keys) < 2 or keys[-1] != "name":
        return False
    block = _node(raw, keys[:-1])
    return isinstance(block, dict) and block.get("name") is not None and block["name"] != value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, compose, override and check a recipe (a file or a recipe name)."""
    raw, origins, file = resolve_recipe(path, overrides)
    recipe = build(raw, str(file))
    recipe.origins = origins
    return recipe


__all__ = ["KINDS", "Recipe", "RecipeError", "build", "load_recipe", "parse_override", "resolve_recipe"]
