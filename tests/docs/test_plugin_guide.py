"""docs/plugin-guide.md's complete examples of a head filter, a combiner and an input refiner run
and pass the conformance kit, so the guide cannot drift from the contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mllm_refine.testing.conformance import check_component

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugin-guide.md"


@pytest.fixture(scope="module")
def examples() -> dict:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
    complete = [b for b in blocks if "class ImageBoost" in b]
    assert len(complete) == 1
    namespace: dict = {}
    exec(compile(complete[0], f"{DOC.name}[examples]", "exec"), namespace)  # noqa: S102  (the project's own docs)
    return namespace


@pytest.mark.parametrize(("cls", "params"), [("ImageBoost", {"alpha": 1.0}), ("Sharpen", {}), ("Grayscale", {})])
def test_the_guide_examples_conform(examples, cls, params):
    ran = check_component(examples[cls], params, models=["tiny-llava", "tiny-qwen2-vl"])
    assert "params" in ran and any(r.startswith("batch@") for r in ran)
