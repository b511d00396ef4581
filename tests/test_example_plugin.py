"""The example third-party plugin: pip-installed from its folder, found through `mllm-refine
plugins`, its recipe run by name, its own kit-based tests passed; then removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "mllm-refine-entropy"

# One interpreter for the three commands: `plugins`, `run` by recipe name, `recipe show`.
CLI = """
import sys
from mllm_refine.cli import main
for argv in (["plugins"], ["run", "entropy_contrast", "data.n=3", "decode.max_new_tokens=3", "decode.batch_size=3",
                           "--output", sys.argv[1], "--threads", "1"], ["recipe", "show", "entropy_contrast"]):
    print("=== " + argv[0], flush=True)
    code = main(argv)
    if code:
        sys.exit(code)
"""


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLLM_REFINE_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]), "PIP_NO_CACHE_DIR": "1"}


def test_example_plugin_installs_registers_runs_and_passes_its_kit_tests(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    try:
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "--target", str(site), str(source)],
            capture_output=True, text=True, env=_env(site),
        )  # fmt: skip
        assert pip.returncode == 0, pip.stderr
        assert (site / "mllm_refine_entropy" / "recipes" / "entropy_contrast.yaml").is_file()

        run_dir = tmp_path / "run"
        cli = subprocess.run([sys.executable, "-c", CLI, str(run_dir)], capture_output=True, text=True,
                             env=_env(site), cwd=tmp_path)  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        listing = cli.stdout.split("=== run")[0]
        row = next(line.split() for line in listing.splitlines() if " lens_entropy " in line)
        assert row[:4] == ["layer_selector", "lens_entropy", "entropy", "mllm-refine-entropy"]
        assert any(line.split()[:3] == ["recipe", "entropy_contrast", "entropy"] for line in listing.splitlines())

        records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records}) and len(records) == 3
        layers = {layer for r in records for layer in r["choices"]["layer"]}
        assert layers and layers <= {1, 2, 3}  # lens_entropy's default candidates on the 6-block tiny model
        shown = cli.stdout.split("=== recipe")[1]
        assert "name: lens_entropy" in shown and "mllm_refine_entropy/recipes/entropy_contrast.yaml:" in shown

        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
            capture_output=True, text=True, env=_env(site), cwd=source,
        )  # fmt: skip
        assert tests.returncode == 0, tests.stdout[-3000:]
        assert " passed" in tests.stdout
    finally:
        shutil.rmtree(site, ignore_errors=True)
    assert not site.exists()
