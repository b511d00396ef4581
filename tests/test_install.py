"""A regular (non-editable) install ships the core and the built-in plugins under their own names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """The project installed with plain ``pip install`` (not editable) into a folder of its own."""
    target = tmp_path_factory.mktemp("install") / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, env={**os.environ, "PIP_NO_CACHE_DIR": "1"},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return target


def test_pip_install_lists_dualpd(target, tmp_path):
    assert (target / "mllm_refine_plugins" / "dualpd.py").is_file()
    assert not (target / "plugins").exists()  # no bare top-level `plugins` package
    assert (target / "mllm_refine" / "embedded" / "assets" / "vision.safetensors").is_file()
    assert (target / "mllm_refine_plugins" / "vicrop" / "box.py").is_file()
    assert (target / "mllm_refine" / "integrations" / "lmms_eval.py").is_file()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mllm_refine_plugins, mllm_refine.cli as c;"
        "import mllm_refine.lightning, mllm_refine.viz, mllm_refine.embedded, mllm_refine_plugins.vicrop;"
        "assert mllm_refine_plugins.__file__.startswith(sys.argv[1]), mllm_refine_plugins.__file__;"
        "sys.exit(c.main(['plugins']))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLLM_REFINE_PLUGINS", "MLLM_REFINE_BLOCK_PLUGINS")}
    listing = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert listing.returncode == 0, listing.stderr
    assert "hellinger_shift" in listing.stdout and "head_norm_filter" in listing.stdout
    assert (target / "mllm_refine_recipes" / "dualpd.yaml").is_file() and not (target / "recipes").exists()
    assert "mllm_refine_recipes/dualpd.yaml" in listing.stdout  # `plugins` lists the shipped recipes


def test_installed_recipes_resolve_by_name_outside_the_checkout(target, tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mllm_refine.cli as c; from mllm_refine.recipes import load_recipe;"
        "r = load_recipe('vcd_greedy');"  # by name, through `extends: vcd`
        "assert r.parts.logit_combiner.name == 'vcd' and not r.decode.do_sample;"
        "sys.exit(c.main(['recipe', 'list']) or c.main(['recipe', 'show', 'dualpd']))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLLM_REFINE_PLUGINS", "MLLM_REFINE_BLOCK_PLUGINS")}
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "vcd_greedy" in out.stdout and "hellinger_shift" in out.stdout
    assert f"# {target}/mllm_refine_recipes/dualpd.yaml:" in out.stdout  # origins: the installed file
