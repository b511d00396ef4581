"""Reading recipe YAML: ``yaml.SafeLoader`` (plain data only), a key given twice in one mapping
refused naming both lines, and aliases bounded, so no small file expands without limit (a
"billion laughs" of nested ``&anchor`` / ``*alias`` references)."""

from __future__ import annotations

from typing import Any

import yaml

MAX_VALUES = 100_000  # values a document may expand to through its aliases; recipes hold hundreds


class RecipeYAMLError(ValueError):
    """The text is not a recipe YAML: ``problem`` at ``line`` (1-based; None when unknown)."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        self.problem, self.line = problem, line
        super().__init__(f"line {line}: {problem}" if line else problem)


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise RecipeYAMLError(f"key {key!r} is given twice (first on line {seen[key]})", line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: yaml.Node, memo: dict[int, int] | None = None) -> int:
    """How many values ``node`` stands for once every alias is expanded; shared nodes are
    counted once per reference, in time linear in the nodes themselves."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def compose_and_load(text: str) -> tuple[Any, yaml.Node | None]:
    """``(value, node)`` of a one-document YAML text; ``RecipeYAMLError`` names the line."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if expanded_size(node) > MAX_VALUES:
            raise RecipeYAMLError(f"expands to more than {MAX_VALUES} values through its aliases (*name)", node.start_mark.line + 1)
        return loader.construct_document(node), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise RecipeYAMLError(str(getattr(e, "problem", None) or e), mark.line + 1 if mark else None) from e
    finally:
        loader.dispose()


def loads(text: str) -> Any:
    return compose_and_load(text)[0]


__all__ = ["MAX_VALUES", "RecipeYAMLError", "compose_and_load", "expanded_size", "loads"]
