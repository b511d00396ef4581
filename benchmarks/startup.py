"""Start-up time of the commands that need no model, against a baseline commit, in one run.

    python benchmarks/startup.py                  # against HEAD~1
    python benchmarks/startup.py --baseline b39852f --repeats 7

Each command runs in a fresh interpreter (``python -m mllm_refine.cli ...``), this tree and the
baseline's alternating, and the median wall time of each is printed with their ratio. The
baseline is checked out into a temporary git worktree and put first on ``PYTHONPATH`` (the
import system's path finder comes before the editable install's), so both use the same installed
libraries and entry points. Each child runs with one torch thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["--help"], ["plugins"], ["recipe", "list"], ["recipe", "show", str(ROOT / "recipes" / "dualpd.yaml")])


def import_root(tree: Path, into: Path) -> Path:
    """A folder whose entries are ``tree``'s packages under their import names (the project's
    ``package-dir`` mapping), for ``PYTHONPATH``."""
    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    into.mkdir(parents=True, exist_ok=True)
    for name, folder in mapping.items():
        (into / name).symlink_to(tree / folder, target_is_directory=True)
    return into


def wall_time(argv: list[str], env: dict[str, str], cwd: str) -> float:
    """Seconds of one run; ``cwd`` holds no package, so ``-m`` finds the one ``env`` points at."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mllm_refine.cli", *argv], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="HEAD~1", help="git commit to compare with (default HEAD~1)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            old_env = {**env, "PYTHONPATH": str(import_root(tree, Path(tmp) / "path"))}
            print(f"| command | {args.baseline} (s) | this tree (s) | ratio |\n|---|---:|---:|---:|")
            for argv in COMMANDS:
                wall_time(argv, env, tmp)  # warm the file cache for both
                wall_time(argv, old_env, tmp)
                new, old = [], []
                for _ in range(args.repeats):
                    old.append(wall_time(argv, old_env, tmp))
                    new.append(wall_time(argv, env, tmp))
                o, n = statistics.median(old), statistics.median(new)
                shown = " ".join(a.replace(str(ROOT) + "/", "") for a in argv)
                print(f"| `mllm-refine {shown}` | {o:.2f} | {n:.2f} | {o / n:.1f}x |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
