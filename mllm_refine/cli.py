"""The ``mllm-refine`` command.

  mllm-refine run RECIPE [--output DIR] [key=value ...]   decode a dataset with a recipe
  mllm-refine compare RUN_DIR ... [--baseline DIR]        score table with bootstrap CIs
  mllm-refine inspect RECIPE --image P --question Q       plots and a page of what the model sees
  mllm-refine plugins                                     list every registered part
  mllm-refine recipe list                                 every recipe reachable by name
  mllm-refine recipe show RECIPE [key=value ...]          print the resolved recipe, with origins
  mllm-refine recipe reference [--output FILE]            every component's parameters as Markdown

Exit codes: 0 success; 1 the run could not write (disk full, permissions; one line on stderr,
what was written is kept); 2 bad recipe, model or usage (one line on stderr); 3 the run finished
but some samples failed (each has an ``error`` in predictions.jsonl), or ``--fail-fast`` stopped
at the first failing sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mllm_refine import __version__


def cmd_run(
    recipe: str, overrides: list[str], output: str | None, fail_fast: bool, threads: int, restart: bool = False,
    retry_failed: bool = False,
) -> int:
    """Run RECIPE over its data (each stack of a sweep into its own folder); write
    predictions.jsonl, scores.json, summary.json and recipe.yaml."""
    import torch

    from mllm_refine.recipes import load_recipe
    from mllm_refine.run import run_sweep

    torch.set_num_threads(threads)
    r = load_recipe(recipe, overrides)
    summaries = run_sweep(r, output, fail_fast=fail_fast, log=lambda m: print(m, file=sys.stderr),
                          restart=restart, retry_failed=retry_failed)  # fmt: skip
    for s in summaries:  # empty on ranks other than 0
        score = "n/a (no reference answers)" if s.score is None else f"{s.score:.4f}"
        print(f"{s.recipe}: {s.metric} = {score}  ({s.total} samples, {s.written} decoded, {s.skipped} resumed, "
              f"{s.failed} failed, {s.fallbacks} fallback steps, {s.tokens_per_second} tokens/s) -> {s.output}")  # fmt: skip
        print_localisation(Path(s.output) / "scores.json")
    return 3 if any(s.failed for s in summaries) else 0


def print_localisation(scores: Path) -> None:
    """One line per importance map the run's records carried, scored against the target boxes."""
    located = json.loads(scores.read_text()).get("localisation", {}) if scores.is_file() else {}
    for source, v in located.items():
        print(f"  localisation of {source}: pointing game {v['pointing_game']:.4f} (chance {v['pointing_chance']:.4f}), "
              f"mass in box {v['mass_in_box']:.4f} (chance {v['mass_chance']:.4f}), n={v['n']}")  # fmt: skip


def cmd_compare(runs: list[str], baseline: list[str], output: str | None, resamples: int, seed: int) -> int:
    """Compare run folders: a Markdown table of scores per recipe and benchmark, with each
    delta to the vanilla run and its paired bootstrap 95% confidence interval."""
    from mllm_refine.compare import compare

    table, path = compare(runs, baseline, output, resamples, seed)
    print(table, end="")
    print(f"-> {path}", file=sys.stderr)
    return 0


def cmd_plugins() -> int:
    """List every registered component, adapter, dataset, model, metric and recipe."""
    from mllm_refine.plugin_manager import get_registry, is_core

    entries = sorted(get_registry().all(), key=lambda e: (e.kind, e.name))
    rows = [("KIND", "NAME", "PLUGIN", "DISTRIBUTION", "SUMMARY")]
    for e in entries:
        doc = (getattr(e.obj, "__doc__", None) or "").strip().splitlines()
        summary = str(e.obj) if e.kind == "recipe" else (doc[0] if doc else "")  # a recipe is a file
        plugin = f"{e.plugin}*" if is_core(e.plugin, e.distribution) else e.plugin
        rows.append((e.kind, e.name, plugin, e.distribution, summary))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print("* core plugin: always loaded, whatever MLLM_REFINE_PLUGINS and MLLM_REFINE_BLOCK_PLUGINS say")
    return 0


def cmd_recipe_list() -> int:
    """List every recipe reachable by name: name, the plugin that registered it, its first line."""
    from mllm_refine.plugin_manager import get_registry

    rows = [("NAME", "PLUGIN", "SUMMARY")]
    for e in sorted(get_registry().entries.get("recipe", {}).values(), key=lambda e: e.name):
        rows.append((e.name, e.plugin, _recipe_summary(Path(e.obj))))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:2], widths)) + "  " + r[2])
    return 0


def _recipe_summary(path: Path) -> str:
    """A recipe file's first comment line (without ``#``), or its file name."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                return line.strip().lstrip("#").strip() if line.lstrip().startswith("#") else path.name
    except OSError:
        pass
    return path.name


def cmd_recipe_show(recipe: str, overrides: list[str]) -> int:
    """Print RECIPE (a file or a recipe name) fully resolved: what it extends merged in and the
    overrides applied, after checking it; a comment after each value says where it was set."""
    from mllm_refine.recipes import load_recipe
    from mllm_refine.recipes.show import render

    r = load_recipe(recipe, overrides)
    print(render(r.raw, r.origins), end="")
    return 0


def cmd_recipe_reference(output: str | None, everything: bool) -> int:
    """Write the reference of every component's parameters (types, defaults, descriptions) as
    Markdown, generated from the code."""
    from mllm_refine.recipes.reference import write

    return write(output, everything)


def cmd_inspect(
    recipe: str, overrides: list[str], image: str | None, question: str | None, sample_id: str | None,
    output: str | None, all_tokens: bool, threads: int,
) -> int:
    """Inspect one sample under vanilla and RECIPE: attention maps, attention shift, head scores,
    logit lens and crops as PNG + JSON, side by side in a self-contained index.html."""
    import torch

    from mllm_refine.recipes import load_recipe
    from mllm_refine.viz.inspector import inspect_recipe, load_sample
    from mllm_refine.viz.plots import require_matplotlib

    require_matplotlib()
    torch.set_num_threads(threads)
    r = load_recipe(recipe, overrides)
    sample = load_sample(r, image, question, sample_id)
    out = Path(output) if output else Path("runs") / r.name / "inspect"
    page = inspect_recipe(r, sample, out, all_tokens, log=lambda m: print(m, file=sys.stderr))
    print(page)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mllm-refine",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 ok; 1 cannot write records; 2 bad recipe/model/data/usage or a busy or mismatched "
        "run folder; 3 some samples failed; 130 stopped by SIGINT, 143 by SIGTERM (rerun to resume).",
    )
    p.add_argument("--version", action="version", version=f"mllm-refine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key, e.g. data.limit=8")
    run.set_defaults(overrides=[])
    run.add_argument("--output", "-o", help="run folder (default: runs/<recipe name>); a rerun resumes")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing sample")
    run.add_argument("--restart", action="store_true",
                     help="keep a previous run of the output folder aside (<output>.old-N) and start afresh")  # fmt: skip
    run.add_argument("--retry-failed", action="store_true", help="decode again the samples whose records are errors")
    run.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    run.add_argument("--trust-remote-code", action="store_true",
                     help="let a checkpoint run its own code; the recipe must also set model.trust_remote_code: true")  # fmt: skip
    cmp = sub.add_parser("compare", help=str(cmd_compare.__doc__).split(":")[0], description=cmd_compare.__doc__)
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each with predictions.jsonl and recipe.yaml)")
    cmp.add_argument("--baseline", action="append", default=[], metavar="DIR",
                     help="baseline run (default: the run whose recipe has no parts); once per benchmark")  # fmt: skip
    cmp.add_argument("--output", "-o", help="Markdown file to write (default: compare.md next to the first run)")
    cmp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    sub.add_parser("plugins", help=cmd_plugins.__doc__, description=cmd_plugins.__doc__)
    ins = sub.add_parser("inspect", help=str(cmd_inspect.__doc__).split(":")[0], description=cmd_inspect.__doc__)
    ins.add_argument("recipe", help="recipe YAML file")
    ins.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key")
    ins.set_defaults(overrides=[])
    ins.add_argument("--image", help="picture to ask about")
    ins.add_argument("--question", help="question about the picture (with --id: replaces the sample's)")
    ins.add_argument("--id", dest="sample_id", metavar="ID", help="a sample of the recipe's data instead of --image")
    ins.add_argument("--output", "-o", help="folder (default: runs/<recipe name>/inspect)")
    ins.add_argument("--all-tokens", action="store_true", help="every answer token, not only the first")
    ins.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ins.add_argument("--trust-remote-code", action="store_true",
                     help="let a checkpoint run its own code; the recipe must also set model.trust_remote_code: true")  # fmt: skip
    recipe = sub.add_parser("recipe", help="recipe tools")
    rsub = recipe.add_subparsers(dest="recipe_command", required=True)
    rsub.add_parser("list", help=cmd_recipe_list.__doc__, description=cmd_recipe_list.__doc__)
    show = rsub.add_parser("show", help=cmd_recipe_show.__doc__, description=cmd_recipe_show.__doc__)
    show.add_argument("recipe", help="recipe YAML file or recipe name")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    ref = rsub.add_parser("reference", help=str(cmd_recipe_reference.__doc__).split(" as ")[0],
                          description=cmd_recipe_reference.__doc__)  # fmt: skip
    ref.add_argument("--output", "-o", help="Markdown file to write (default: stdout), e.g. docs/reference/components.md")
    ref.add_argument("--all", action="store_true", help="every installed plugin's components, not only mllm-refine's")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)  # --help exits here, before anything heavy is imported
    from mllm_refine.models import allow_remote_code

    # Overrides may come after options (`run R --output D a.b=1`); anything else is a usage error.
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown or (extra and args.command in ("plugins", "compare")):
        p.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra and getattr(args, "recipe_command", None) in ("list", "reference"):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    allow_remote_code(getattr(args, "trust_remote_code", False))
    try:
        return _dispatch(args)
    except KeyboardInterrupt:  # a Ctrl-C before decoding began (during it, a run stops after the batch)
        print("mllm-refine: interrupted by SIGINT; what was written is kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from mllm_refine.lightning.stopping import Stopped

        if not isinstance(e, Stopped):
            raise
        if not e.quiet:
            print(f"mllm-refine: {e}", file=sys.stderr)
        return e.code


def _dispatch(args: argparse.Namespace) -> int:
    """The command, with its failures as one line and an exit code (see the parser's epilog)."""
    from mllm_refine.data.manifest import SampleError
    from mllm_refine.models import ModelLoadError
    from mllm_refine.plugin_manager import PluginError
    from mllm_refine.recipes import RecipeError

    try:
        return _command(args)
    except SampleError as e:  # --fail-fast stopped at this sample
        print(f"mllm-refine: error: {e}", file=sys.stderr)
        return 3
    except (RecipeError, ModelLoadError, PluginError, FileNotFoundError, ValueError) as e:
        print(f"mllm-refine: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mllm-refine plugins | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is quiet
        return 1
    except OSError as e:  # e.g. the shard writer's disk-full error; what was written is kept
        print(f"mllm-refine: error: {e}", file=sys.stderr)
        return 1


def _command(args: argparse.Namespace) -> int:
    if args.command == "run":
        return cmd_run(args.recipe, args.overrides, args.output, args.fail_fast, args.threads,
                       args.restart, args.retry_failed)  # fmt: skip
    if args.command == "compare":
        return cmd_compare(args.runs, args.baseline, args.output, args.resamples, args.seed)
    if args.command == "inspect":
        return cmd_inspect(args.recipe, args.overrides, args.image, args.question, args.sample_id,
                           args.output, args.all_tokens, args.threads)  # fmt: skip
    if args.command == "plugins":
        return cmd_plugins()
    if args.recipe_command == "list":
        return cmd_recipe_list()
    if args.recipe_command == "reference":
        return cmd_recipe_reference(args.output, args.all)
    return cmd_recipe_show(args.recipe, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
