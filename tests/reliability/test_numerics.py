"""A combiner that yields NaN/inf for one sample: that sample falls back to the final logits per
step, the others are untouched, and the fallbacks are counted in its record and the summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import pytest

from mllm_refine.cli import main
from mllm_refine.components import LogitCombiner
from mllm_refine.hookspecs import hookimpl
from mllm_refine.plugin_manager import get_plugin_manager, get_registry


@dataclass
class FirstRowBroken(LogitCombiner):
    """Row 0 of each batch gets NaN (and +inf) logits; other rows are the final logits plus ``shift``."""

    name = "first_row_broken"
    uses_layer = False
    shift: float = 0.0

    def combine(self, view, layer):
        out = view.logits.clone() + self.shift
        out[0, 0], out[0, 1] = float("nan"), float("inf")
        return out


class BrokenPlugin:
    @hookimpl
    def register_components(self, register: Callable[[type], None]) -> None:
        register(FirstRowBroken)


@pytest.fixture
def broken_combiner():
    pm = get_plugin_manager()
    plugin = BrokenPlugin()
    pm.register(plugin, name="BrokenPlugin")
    get_registry(refresh=True)
    yield
    pm.unregister(plugin)
    get_registry(refresh=True)


def test_nan_row_falls_back_for_that_sample_only(tmp_path, good_manifest, helpers, broken_combiner):
    base = (f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {good_manifest}}}\n"
            "decode: {max_new_tokens: 4, batch_size: 3}\n")  # fmt: skip
    vanilla = helpers["recipe"](tmp_path / "vanilla.yaml", base)
    broken = helpers["recipe"](tmp_path / "broken.yaml", base + "logit_combiner: {name: first_row_broken}\n")
    assert main(["run", str(vanilla), "-o", str(tmp_path / "vanilla")]) == 0
    assert main(["run", str(broken), "-o", str(tmp_path / "broken")]) == 0
    want = helpers["records"](tmp_path / "vanilla" / "predictions.jsonl")
    got = helpers["records"](tmp_path / "broken" / "predictions.jsonl")
    steps = len(got["g0"]["tokens"])
    assert [got[i]["fallbacks"] for i in ("g0", "g1", "g2")] == [steps, 0, 0] and steps > 0
    # the fallback decodes from the final logits: every sample answers as vanilla decoding does
    assert all(got[i]["tokens"] == want[i]["tokens"] and got[i]["error"] is None for i in want)
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["fallbacks"] == steps and summary["failed"] == 0

