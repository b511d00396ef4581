"""The interfaces every decoding part implements."""

from mllm_refine.components.base import Component, ModelInfo, resolve_layers
from mllm_refine.components.grid_map import first_grid_maps
from mllm_refine.components.head_filter import AttentionRow, HeadFilter
from mllm_refine.components.input_refiner import InputRefiner
from mllm_refine.components.kinds import KINDS, PART_KEYS, PART_KINDS, PartKind
from mllm_refine.components.layer_selector import LayerSelector
from mllm_refine.components.logit_combiner import LogitCombiner
from mllm_refine.components.needs import Needs
from mllm_refine.components.step_view import StepView

__all__ = [
    "AttentionRow",
    "Component",
    "HeadFilter",
    "InputRefiner",
    "KINDS",
    "LayerSelector",
    "LogitCombiner",
    "ModelInfo",
    "Needs",
    "PART_KEYS",
    "PART_KINDS",
    "PartKind",
    "StepView",
    "first_grid_maps",
    "resolve_layers",
]
