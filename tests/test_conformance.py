"""The conformance kit: every registered part that declares ``noop_params`` passes it, and each
check catches the fault it is for (parts that break one rule, on the tiny LLaVA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from mllm_refine.components import KINDS, HeadFilter, LayerSelector, LogitCombiner, Needs
from mllm_refine.plugin_manager import get_registry
from mllm_refine.testing.conformance import (
    ConformanceError,
    check_batch_independence,
    check_component,
    check_needs_and_returns,
    check_no_layer_keeps_final,
    check_noop,
    check_params,
)

TARGETS = sorted(
    (e for e in get_registry().all() if e.kind in KINDS and e.obj.noop_params is not None),
    key=lambda e: (e.kind, e.name),
)
MODEL = "tiny-llava"


def test_dualpd_parts_and_layer_contrast_are_checked():
    assert {"hellinger_shift", "head_norm_filter", "layer_contrast"} <= {e.name for e in TARGETS}


@pytest.mark.parametrize("entry", TARGETS, ids=lambda e: f"{e.kind}:{e.name}")
def test_registered_part_conforms_on_every_tiny_model(entry):
    ran = check_component(entry.obj)
    assert sum(r.startswith("noop@") for r in ran) == 5


# --- parts that each break one rule ---------------------------------------------------------


@dataclass
class FirstBlock(LayerSelector):
    """Valid base: declares and reads block 1's attention, always picks block 1."""

    name = "first_block"
    declared: ClassVar[frozenset[int]] = frozenset({1})
    read: ClassVar[tuple[int, ...]] = (1,)

    def candidates(self):
        return [1]

    def needs(self):
        return Needs(attention=self.declared)

    def select(self, view):
        for layer in self.read:
            view.attention(layer)
        return torch.ones(view.logits.shape[0], dtype=torch.long)


@dataclass
class ReadsUndeclared(FirstBlock):
    name = "reads_undeclared"
    read = (1, 2)


@dataclass
class DeclaresUnused(FirstBlock):
    name = "declares_unused"
    declared = frozenset({1, 2})


@dataclass
class FloatChoice(FirstBlock):
    name = "float_choice"

    def select(self, view):
        return super().select(view).float()


@dataclass
class OutsideCandidates(FirstBlock):
    name = "outside_candidates"

    def select(self, view):
        return super().select(view) + 1


@dataclass
class BatchMean(LogitCombiner):
    """Subtracts the batch mean: each sample's answer depends on the others."""

    name = "batch_mean"
    uses_layer = False

    def combine(self, view, layer):
        return view.logits - view.logits.mean(0, keepdim=True)


@dataclass
class IgnoresNoLayer(LogitCombiner):
    """Contrasts every row, even where no layer was selected."""

    name = "ignores_no_layer"

    def combine(self, view, layer):
        return -view.logits


@dataclass
class FakeNoop(HeadFilter):
    """Claims gamma=1 is a no-op but flattens every head's scores regardless."""

    name = "fake_noop"
    noop_params = {"gamma": 1.0}
    gamma: float = 0.5

    def active_layers(self):
        return [1, 2]

    def scores(self, scores, row):
        return scores * 0.0


@dataclass
class DoubleProbs(FakeNoop):
    name = "double_probs"

    def scores(self, scores, row):
        return scores

    def probs(self, probs, row):
        return probs * 2


@dataclass
class NoDefault(LayerSelector):
    name = "no_default"
    layer: int

    def candidates(self):
        return [self.layer]

    def select(self, view):
        return torch.full((view.logits.shape[0],), self.layer)


@pytest.mark.parametrize(
    "check, cls, message",
    [
        (check_needs_and_returns, ReadsUndeclared, "read something it did not declare: attention of layer 2"),
        (check_needs_and_returns, DeclaresUnused, r"declares Needs.attention \[2\] but never reads them"),
        (check_needs_and_returns, FloatChoice, r"select must return a \(4,\) long tensor, got \(4,\) torch.float32"),
        (check_needs_and_returns, OutsideCandidates, r"select returned \[2\], not in candidates\(\) or -1"),
        (check_needs_and_returns, DoubleProbs, "probs rows must sum to 1 over valid keys"),
        (check_batch_independence, BatchMean, "'s0' decodes to .* in a batch of 4 but .* alone"),
        (check_no_layer_keeps_final, IgnoresNoLayer, "without a selected layer must keep the final logits"),
        (check_noop, FakeNoop, r"with \{'gamma': 1.0\}: no-op parameters changed sample"),
    ],
)
def test_kit_catches_a_broken_part(check, cls, message):
    with pytest.raises(ConformanceError, match=f"{cls.name} \\({cls.__name__}\\) on {MODEL}.*{message}"):
        check(cls, MODEL)


def test_the_valid_base_passes():
    check_needs_and_returns(FirstBlock, MODEL)
    check_batch_independence(FirstBlock, MODEL)


def test_params_check_names_the_parameter():
    with pytest.raises(ConformanceError, match="no_default .*parameter 'layer' has no default"):
        check_params(NoDefault)
    with pytest.raises(ConformanceError, match="params names 'gama', not a parameter; valid: gamma"):
        check_params(FakeNoop, {"gama": 1.0})
