"""Print a resolved recipe as YAML, each value followed by a comment saying where it was set."""

from __future__ import annotations

from typing import Any

import yaml

from mllm_refine.recipes.compose import Key, Origins, origin_of


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("...").strip()  # a lone scalar ends its document with "..."


def _is_block(value: Any) -> bool:
    """Values printed over several lines: non-empty mappings, lists holding mappings or lists."""
    if isinstance(value, dict):
        return bool(value)
    return isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)


def _lines(value: Any, key: Key, indent: str, origins: Origins) -> list[tuple[str, str]]:
    """``(yaml text, origin)`` per line of a block ``value`` at ``key``."""
    out: list[tuple[str, str]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        here = (*key, k)
        head = f"{indent}{k}:" if isinstance(value, dict) else f"{indent}-"
        if not _is_block(v):
            out.append((f"{head} {_flow(v)}", origin_of(origins, here)))
        elif isinstance(value, list) and isinstance(v, dict):
            inner = _lines(v, here, indent + "  ", origins)  # first key on the "- " line
            out.append((f"{head} {inner[0][0].lstrip()}", inner[0][1]))
            out.extend(inner[1:])
        else:
            out.append((head, ""))
            out.extend(_lines(v, here, indent + "  ", origins))
    return out


def render(raw: dict[str, Any], origins: Origins) -> str:
    """YAML of ``raw`` that loads back to ``raw``, with ``# origin`` after every value."""
    lines = _lines(raw, (), "", origins)
    width = max((len(text) for text, origin in lines if origin), default=0)
    return "".join(f"{text.ljust(width)}  # {origin}\n" if origin else f"{text}\n" for text, origin in lines)
