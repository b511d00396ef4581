"""Listing commands stay free of torch: plugin modules import it on first use (mllm_refine.lazy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mllm_refine.lazy import LazyModule, lazy_factory

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lightning", "torchmetrics")

# Runs a command in a fresh interpreter and prints which heavy libraries it imported.
PROBE = """
import contextlib, io, json, sys
from mllm_refine.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "chars": len(out.getvalue()),
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


@pytest.mark.parametrize(
    "argv",
    [["plugins"], ["recipe", "list"], ["recipe", "show", "recipes/dualpd.yaml"], ["recipe", "show", "vicrop_rel"],
     ["recipe", "show", "recipes/vrga.yaml", "model.dtype=bfloat16"]],
    ids=lambda a: " ".join(a),
)  # fmt: skip
def test_listing_commands_import_no_model_library(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["chars"] > 100
    assert result["heavy"] == [], f"`mllm-refine {' '.join(argv)}` imported {result['heavy']}"


def test_lazy_module_imports_at_first_attribute() -> None:
    stand_in = LazyModule("json")
    assert "not loaded" in repr(stand_in)
    assert stand_in.dumps([1]) == "[1]"
    assert "loaded" in repr(stand_in) and "not" not in repr(stand_in)
    with pytest.raises(AttributeError):
        _ = stand_in.no_such_name
    with pytest.raises(ModuleNotFoundError):
        _ = LazyModule("mllm_refine_no_such_module").anything


def test_lazy_factory_imports_its_target_when_called() -> None:
    factory = lazy_factory("collections:OrderedDict", "An ordered dict.")
    assert factory.__doc__ == "An ordered dict." and factory.__name__ == "OrderedDict"
    assert factory(a=1) == {"a": 1}
    with pytest.raises(AttributeError):
        lazy_factory("collections:NoSuchThing", "x")()
