"""The ``mllm-refine`` command.

  mllm-refine run RECIPE [--output DIR] [key=value ...]   decode a dataset with a recipe
  mllm-refine plugins                                     list every registered part
  mllm-refine recipe show RECIPE [key=value ...]          print the resolved recipe

Exit codes: 0 success; 2 bad recipe, model or usage (one line on stderr); 3 the run finished
but some samples failed (each has an ``error`` in predictions.jsonl).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from mllm_refine import __version__


def cmd_run(recipe: str, overrides: list[str], output: str | None, fail_fast: bool, threads: int) -> int:
    """Run RECIPE over its data; write predictions.jsonl, scores.json and summary.json."""
    import torch

    from mllm_refine.recipes import load_recipe
    from mllm_refine.run import run_recipe

    torch.set_num_threads(threads)
    r = load_recipe(recipe, overrides)
    out = Path(output) if output else Path("runs") / r.name
    s = run_recipe(r, out, fail_fast=fail_fast, log=lambda m: print(m, file=sys.stderr))
    score = "n/a (no reference answers)" if s.score is None else f"{s.score:.4f}"
    print(f"{r.name}: {s.metric} = {score}  ({s.total} samples, {s.written} decoded, {s.skipped} resumed, "
          f"{s.failed} failed, {s.fallbacks} fallback steps, {s.tokens_per_second} tokens/s) -> {s.output}")  # fmt: skip
    return 3 if s.failed else 0


def cmd_plugins() -> int:
    """List every registered component, adapter, dataset, model and metric."""
    from mllm_refine.plugin_manager import get_registry

    entries = sorted(get_registry().all(), key=lambda e: (e.kind, e.name))
    rows = [("KIND", "NAME", "PLUGIN", "DISTRIBUTION", "SUMMARY")]
    for e in entries:
        doc = (getattr(e.obj, "__doc__", None) or "").strip().splitlines()
        rows.append((e.kind, e.name, e.plugin, e.distribution, doc[0] if doc else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def cmd_recipe_show(recipe: str, overrides: list[str]) -> int:
    """Print RECIPE with overrides applied, after checking it."""
    from mllm_refine.recipes import load_recipe

    r = load_recipe(recipe, overrides)
    print(yaml.safe_dump(r.raw, sort_keys=False), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mllm-refine",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 ok; 2 bad recipe/model/usage; 3 some samples failed.",
    )
    p.add_argument("--version", action="version", version=f"mllm-refine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key, e.g. data.limit=8")
    run.set_defaults(overrides=[])
    run.add_argument("--output", "-o", help="run folder (default: runs/<recipe name>); a rerun resumes")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing sample")
    run.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    sub.add_parser("plugins", help=cmd_plugins.__doc__, description=cmd_plugins.__doc__)
    recipe = sub.add_parser("recipe", help="recipe tools")
    rsub = recipe.add_subparsers(dest="recipe_command", required=True)
    show = rsub.add_parser("show", help=cmd_recipe_show.__doc__, description=cmd_recipe_show.__doc__)
    show.add_argument("recipe")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    from mllm_refine.models import ModelLoadError
    from mllm_refine.plugin_manager import PluginError
    from mllm_refine.recipes import RecipeError

    p = parser()
    args, extra = p.parse_known_args(argv)
    # Overrides may come after options (`run R --output D a.b=1`); anything else is a usage error.
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown or (extra and args.command == "plugins"):
        p.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    try:
        if args.command == "run":
            return cmd_run(args.recipe, args.overrides, args.output, args.fail_fast, args.threads)
        if args.command == "plugins":
            return cmd_plugins()
        return cmd_recipe_show(args.recipe, args.overrides)
    except (RecipeError, ModelLoadError, PluginError, FileNotFoundError, ValueError) as e:
        print(f"mllm-refine: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
