"""Operator budgets of a probed decode step: how many aten ops a probed block and the per-step
processor dispatch. Counts, not times: the same on every machine, so a change that adds ops to the
hot path fails here before a benchmark has to find it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from benchmarks.decode_cost import EagerRows
from benchmarks.measure import OpCount
from mllm_refine.engine import Decoder, Parts
from mllm_refine.engine.capture import Capture
from mllm_refine.engine.processor import RefineProcessor
from mllm_refine.recipes import load_recipe
from mllm_refine.testing.tiny_models import tiny_llava

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@contextmanager
def _counted(owner: type, attr: str, calls: list[int]) -> Iterator[None]:
    """Count the ops of each call of ``owner.attr`` made at a decode step (step >= 1)."""
    original = getattr(owner, attr)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        capture = self if isinstance(self, Capture) else self.capture
        if capture.step == 0:
            return original(self, *args, **kwargs)
        with OpCount() as mode:
            out = original(self, *args, **kwargs)
        calls.append(mode.total)
        return out

    setattr(owner, attr, wrapper)
    try:
        yield
    finally:
        setattr(owner, attr, original)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def _decode(llava, samples, parts: Parts) -> tuple[list[int], list[int]]:
    model, processor = llava
    blocks: list[int] = []
    steps: list[int] = []
    decoder = Decoder(model, processor, parts, None)
    decoder.config.max_new_tokens = 4
    with _counted(Capture, "on_attention", blocks), _counted(RefineProcessor, "__call__", steps):
        decoder.generate(samples[:1])
    assert steps, "no decode step was counted"
    return blocks, steps


# Budgets at batch 1 on torch 2.13. The eager row is a product, a scale, a softmax and a product
# plus the views that feed bmm (11); a pass's first probed block also builds the pass's masks and
# gather index (4 more), and a filter may build its per-step constants there too. Each filter's
# budget beyond the row is what its formula needs: VRGA's engaged-head test and boost (17),
# DualPD's norm, lowest head and decay (6).
@pytest.mark.parametrize(
    "recipe, per_block, first",
    [(None, 11, 15), ("vrga", 28, 45), ("dualpd_heads", 17, 21), ("dualpd", 18, 22)],
)
def test_probed_block_op_budget(llava, samples, recipe, per_block, first):
    parts = Parts(head_filters=[EagerRows()]) if recipe is None else load_recipe(RECIPES / f"{recipe}.yaml").parts
    blocks, _ = _decode(llava, samples, parts)
    name = recipe or "eager rows"
    assert blocks, f"{name}: no probed block at a decode step"
    typical = sorted(blocks)[len(blocks) // 2]
    assert typical <= per_block, f"{name}: {typical} ops in a probed block (budget {per_block})"
    assert max(blocks) <= first, f"{name}: {max(blocks)} ops in a pass's first probed block (budget {first})"


# The processor runs the selector, the combiner and the guard once per step: DoLa's dynamic
# selector, DualPD's layer selector with its contrast, and DeCo's anchor with its modulation.
# At batch 1 each of these ops is dispatched once per step, after a forward has evicted the
# caches, so it costs several times its warm time (docs/benchmarks.md, "What the profiles found").
@pytest.mark.parametrize("recipe, per_step", [("dola", 53), ("dualpd_layer", 46), ("deco", 53)])
def test_step_processor_op_budget(llava, samples, recipe, per_step):
    _, steps = _decode(llava, samples, load_recipe(RECIPES / f"{recipe}.yaml").parts)
    assert max(steps) <= per_step, f"{recipe}: {max(steps)} ops in a decode step's processor (budget {per_step})"
