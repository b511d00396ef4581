"""Recipe composition: ``extends:``, deep merge, overrides, and where every value came from.

Merge rule (a child recipe over the recipes it extends, in order):
- mappings merge key by key, recursively;
- a mapping whose ``name`` differs from the base's replaces it whole (switching a part or a
  dataset drops the old one's parameters);
- lists, scalars and ``null`` replace (``null`` is a value: ``layer_selector: null`` removes the
  part, a parameter set to ``null`` takes the value ``None``); ``[]`` empties a list;
- ``name`` and ``description`` are never inherited (a run is named after its own recipe).

``extends`` is one reference or a list of them. A reference with a ``/`` or a ``.yaml``/``.yml``
suffix is a path relative to the extending file; a bare word is a recipe name: one registered
through ``register_recipes``, by mllm-refine (its ``recipes/`` folder) or by a plugin.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mllm_refine.plugin_manager import get_registry
from mllm_refine.recipes import safe_yaml
from mllm_refine.recipes.schema import RecipeError, suggest

Key = tuple[str | int, ...]  # a value's path: mapping keys and list indices
Origins = dict[Key, str]  # path -> "file:line" or "override key=value"

EXTENDS = "extends"
OWN_KEYS = ("name", "description")


def recipe_names() -> dict[str, Path]:
    """Every recipe reachable by bare name: those registered through ``register_recipes``, the
    shipped ones (``mllm_refine_recipes``) included."""
    return {e.name: Path(e.obj) for e in get_registry().entries.get("recipe", {}).values()}


def is_name(ref: str) -> bool:
    return "/" not in ref and "\\" not in ref and not ref.endswith((".yaml", ".yml"))


def find_recipe(ref: str, relative_to: Path | None, where: str) -> Path:
    """The file ``ref`` names: a path (relative to ``relative_to``) or a recipe name."""
    if not is_name(ref):
        path = Path(ref).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.is_file():
            raise RecipeError(f"{where}: recipe file not found: {path}")
        return path
    names = recipe_names()
    if ref not in names:
        raise RecipeError(f"{where}: no recipe named {ref!r}{suggest(ref, list(names))}; known: {', '.join(sorted(names))}")
    return names[ref]


def read_yaml_node(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """A recipe file's mapping and its YAML node (for the line of each key)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: recipe file not found")
    try:
        raw, node = safe_yaml.compose_and_load(p.read_text(encoding="utf-8"))
    except safe_yaml.RecipeYAMLError as e:
        raise RecipeError(f"{p}{f':{e.line}' if e.line else ''}: not a valid recipe YAML ({e.problem})") from e
    except UnicodeDecodeError as e:
        raise RecipeError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from e
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: a recipe is a mapping of keys, got {type(raw).__name__}")
    return raw, node


def read_with_origins(path: Path) -> tuple[dict[str, Any], Origins]:
    """A recipe file's mapping (``safe_yaml``) and the line of every key and list item."""
    raw, node = read_yaml_node(path)  # checks the file, the YAML and that it is a mapping
    origins: Origins = {}
    if node is not None:
        _walk(node, raw, (), _shown(path), origins)
    return raw, origins


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _walk(node: yaml.Node, value: Any, key: Key, file: str, out: Origins) -> None:
    if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
        by_text = {str(k): k for k in value}
        for k_node, v_node in node.value:
            k = by_text.get(str(k_node.value))
            if k is None:
                continue
            out[key + (k,)] = f"{file}:{k_node.start_mark.line + 1}"
            _walk(v_node, value[k], (*key, k), file, out)
    elif isinstance(node, yaml.SequenceNode) and isinstance(value, list):
        for i, (item_node, item) in enumerate(zip(node.value, value)):
            out[key + (i,)] = f"{file}:{item_node.start_mark.line + 1}"
            _walk(item_node, item, (*key, i), file, out)


def _under(origins: Origins, key: Key) -> Origins:
    return {k: v for k, v in origins.items() if k[: len(key)] == key}


def drop_origins(origins: Origins, key: Key) -> None:
    """Forget the origins of ``key`` and of everything under it."""
    for k in list(_under(origins, key)):
        del origins[k]


def merge(base: Any, child: Any, origins: Origins, child_origins: Origins, key: Key = ()) -> Any:
    """``child`` over ``base`` by the module's rule; ``origins`` (the base's) is updated in place."""
    both = isinstance(base, dict) and isinstance(child, dict)
    if both and (key == () or "name" not in child or "name" not in base or child["name"] == base["name"]):
        out = dict(base)
        for k, v in child.items():
            out[k] = merge(base[k], v, origins, child_origins, (*key, k)) if k in base else copy.deepcopy(v)
            if k not in base:
                drop_origins(origins, (*key, k))
                origins.update(_under(child_origins, (*key, k)))
        if key in child_origins:
            origins[key] = child_origins[key]
        return out
    drop_origins(origins, key)
    origins.update(_under(child_origins, key))
    return copy.deepcopy(child)


def resolve(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """The recipe at ``path`` with everything it extends merged in, and each value's origin."""
    real = path.resolve()
    raw, origins = read_with_origins(path)
    refs = raw.pop(EXTENDS, None)
    origins = {k: v for k, v in origins.items() if k[:1] != (EXTENDS,)}
    if refs is None:
        return raw, origins
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise RecipeError(f"{path}: {EXTENDS}: expected a recipe name or path, or a list of them; got {refs!r}")
    merged: dict[str, Any] = {}
    merged_origins: Origins = {}
    for ref in refs:
        base_path = find_recipe(ref, path.parent, f"{path}: {EXTENDS}")
        seen = (*chain, real)
        if base_path.resolve() in seen:
            cycle = " -> ".join(str(p) for p in (*seen[seen.index(base_path.resolve()) :], base_path.resolve()))
            raise RecipeError(f"{path}: {EXTENDS}: cycle: {cycle}")
        base, base_origins = resolve(base_path, seen)
        merged = merge(merged, base, merged_origins, base_origins)
    for own in OWN_KEYS:  # a recipe's identity is its own: never inherited
        merged.pop(own, None)
        drop_origins(merged_origins, (own,))
    out = merge(merged, raw, merged_origins, origins)
    first = {k: out.pop(k) for k in OWN_KEYS if k in out}
    return {**first, **out}, merged_origins


def override_origins(raw: dict[str, Any], parts: list[str], text: str, origins: Origins) -> None:
    """Record that override ``text`` set the value at dotted ``parts`` (after it was applied)."""
    key: list[str | int] = []
    node: Any = raw
    for part in parts:
        if isinstance(node, list):
            key.append(int(part))
            node = node[int(part)]
        else:
            key.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    drop_origins(origins, tuple(key))
    origins[tuple(key)] = f"override {text}"


def origin_of(origins: Origins, key: Key) -> str:
    """The origin of ``key`` or of its nearest ancestor that has one."""
    for n in range(len(key), -1, -1):
        if key[:n] in origins:
            return origins[key[:n]]
    return ""
