"""The part kinds are declared once (``PART_KINDS``); every other table of them derives from it."""

from __future__ import annotations

import dataclasses

from mllm_refine.components import KINDS, PART_KEYS, PART_KINDS, Component
from mllm_refine.engine.parts import Parts
from mllm_refine.recipes.loader import TOP_LEVEL
from mllm_refine_plugins.dualpd import HeadNormFilter, HellingerShiftSelector
from mllm_refine_plugins.layer_contrast import LayerContrastCombiner


def test_parts_fields_are_the_recipe_keys_in_order():
    assert [f.name for f in dataclasses.fields(Parts)] == list(PART_KEYS)
    assert [k for k in TOP_LEVEL if k in PART_KEYS] == list(PART_KEYS)


def test_each_kind_is_its_interfaces_own():
    for k in PART_KINDS:
        assert issubclass(k.interface, Component) and k.kind == k.interface.kind
        assert KINDS[k.kind] is k.interface
        assert k.intro.startswith(f"`{k.key}:`") and ("(a list)" in k.intro) == k.many


def test_keyed_names_each_part_by_its_recipe_key():
    a, b = HeadNormFilter(), HeadNormFilter(ratio=0.3)
    selector, combiner = HellingerShiftSelector(), LayerContrastCombiner()
    parts = Parts(layer_selector=selector, head_filters=[a, b], logit_combiner=combiner)
    assert parts.keyed() == [("layer_selector", selector), ("head_filters[0]", a), ("head_filters[1]", b),
                             ("logit_combiner", combiner)]  # fmt: skip
    assert parts.components() == [selector, a, b, combiner] and Parts().keyed() == []
