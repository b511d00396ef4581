"""The import contract: plugins import the public contract only, and no layer of the package
imports a layer above it. Each exception is listed with its reason; a new import across the
contract fails, and so does an exception that is no longer needed (the list only shrinks)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a plugin may import from mllm-refine (and these modules' submodules).
PLUGIN_API = ("mllm_refine.components", "mllm_refine.functional", "mllm_refine.hookspecs", "mllm_refine.lazy")
PLUGIN_EXCEPTIONS: dict[tuple[str, str], str] = {}

# Layers of the package, lowest first; a module may import its own layer and those below.
LAYERS = (
    ("lazy", "compat", "hookspecs"),
    ("data",),
    ("components",),
    ("functional",),
    ("adapters", "metrics", "processors"),
    ("plugin_manager", "models", "adapter_lookup"),
    ("engine",),
    ("recipes", "embedded", "testing"),
    ("lightning", "run", "refiner", "compare", "viz", "integrations"),
    ("cli",),
)
LAYER_EXCEPTIONS = {
    ("mllm_refine.hookspecs", "mllm_refine.adapters.base"): "the register callback's type (TYPE_CHECKING)",
    ("mllm_refine.hookspecs", "mllm_refine.components.base"): "the register callback's type (TYPE_CHECKING)",
}


def imports_of(path: Path) -> set[str]:
    """Every absolute import in the file, at any depth (function bodies and TYPE_CHECKING too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "mllm_refine" or len(parts) == 1:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module}: not in any layer of LAYERS; add it")


def runtime_targets(path: Path, modules: set[str]) -> set[str]:
    """The package modules the file imports when it runs (``TYPE_CHECKING`` blocks left out);
    ``from pkg import sub`` names the submodule ``pkg.sub`` where it is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out & modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_plugins_import_only_the_contract():
    found = set()
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        here = "mllm_refine_plugins." + ".".join(path.relative_to(ROOT / "plugins").with_suffix("").parts[:1])
        for target in imports_of(path):
            if not target.startswith("mllm_refine") or target.startswith(PLUGIN_API) or target.startswith(here):
                continue
            found.add((str(path.relative_to(ROOT)), target))
    assert found - set(PLUGIN_EXCEPTIONS) == set(), "plugins importing past the contract"
    assert set(PLUGIN_EXCEPTIONS) - found == set(), "exceptions no longer needed: remove them"


def test_no_layer_imports_a_higher_one():
    found = set()
    for path in sorted((ROOT / "mllm_refine").rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        for target in imports_of(path):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.add((me, target))
    assert found - set(LAYER_EXCEPTIONS) == set(), "imports of a higher layer"
    assert set(LAYER_EXCEPTIONS) - found == set(), "exceptions no longer needed: remove them"


def test_no_module_imports_itself_back_at_run_time():
    paths = {module_name(p): p for p in (ROOT / "mllm_refine").rglob("*.py")}
    graph = {m: runtime_targets(p, set(paths)) - {m} for m, p in paths.items()}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_contract_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mllm_refine.engine.decoder import Decoder\n")
    assert "mllm_refine.engine.decoder" in imports_of(bad)
    assert layer_of("mllm_refine.engine.decoder") > layer_of("mllm_refine.components.base")
