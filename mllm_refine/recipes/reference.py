"""The recipe parameter reference, generated from the registered components' dataclasses.

Regenerate docs/reference/components.md (CI fails when it is stale):

    mllm-refine recipe reference --output docs/reference/components.md

Each parameter's description is the comment on its line in the class body.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, Union

import yaml

from mllm_refine.components import PART_KINDS
from mllm_refine.engine.config import DecodeConfig
from mllm_refine.plugin_manager import get_registry

OUTPUT = "docs/reference/components.md"
COMMAND = f"mllm-refine recipe reference --output {OUTPUT}"


def type_name(tp: Any) -> str:
    """``list[int] | None``, ``'all' | 'image'``, ``float``: a parameter type as a recipe author reads it."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class body (empty when there is none)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    body = ast.parse(source).body[0]
    out = {}
    for node in getattr(body, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = comments.get(node.end_lineno or node.lineno, "")
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def param_table(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if not fields:
        return ["No parameters."]
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for f in fields:
        rows.append(
            f"| `{f.name}` | `{_cell(type_name(hints[f.name]))}` | `{_cell(_default(f))}` | {_cell(comments.get(f.name, ''))} |"
        )
    return rows


def component_reference(distributions: tuple[str, ...] | None = ("mllm-refine",)) -> str:
    """Markdown for every registered component (of ``distributions``; None: all installed)."""
    registry = get_registry()
    lines = [
        "# Component reference",
        "",
        f"Generated from the code by `{COMMAND}`; do not edit by hand.",
        "Every parameter is a recipe key of its component (`{name: ..., <parameter>: <value>}`).",
        "",
    ]
    for kind, title, intro in ((k.kind, k.title, k.intro) for k in PART_KINDS):
        entries = [
            registry.get(kind, n) for n in registry.names(kind)
            if distributions is None or registry.get(kind, n).distribution in distributions
        ]  # fmt: skip
        if not entries:
            continue
        lines += [f"## {title}", "", intro, ""]
        for e in entries:
            cls = e.obj
            doc = inspect.getdoc(cls) or ""
            lines += [f"### `{e.name}`", "", doc.split("\n\n")[0].replace("\n", " "), ""]
            where = f"Plugin `{e.plugin}` ({e.distribution}), class `{cls.__module__}.{cls.__qualname__}`."
            noop = getattr(cls, "noop_params", None)
            if noop is not None:
                where += f" No-op parameters: `{_cell(yaml.safe_dump(noop, default_flow_style=True).strip())}`."
            lines += [where, "", *param_table(cls), ""]
    lines += ["## Decoding settings", "", "`decode:` applies to every recipe.", "", *param_table(DecodeConfig), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mllm_refine.recipes.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", "-o", help=f"write here (e.g. {OUTPUT}) instead of stdout")
    p.add_argument("--all", action="store_true", help="every installed plugin's components, not only mllm-refine's")
    args = p.parse_args(argv)
    return write(args.output, args.all)


def write(output: str | None, everything: bool = False) -> int:
    text = component_reference(None if everything else ("mllm-refine",))
    if output:
        from pathlib import Path

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
