"""The contract of a decoding part: the interfaces it implements, what it may read (``StepView``,
``RefineContext``, ``PrefillView``, ``BranchAdapter``), what it declares (``Needs``) and the data it
works on (``Sample``, ``ModelInfo``). Plugins import this, ``mllm_refine.functional`` and ``hookimpl``."""

from mllm_refine.components.base import Component, ModelInfo, resolve_layers
from mllm_refine.components.branch import Branch, BranchAdapter
from mllm_refine.components.grid_map import first_grid_maps
from mllm_refine.components.head_filter import AttentionRow, HeadFilter
from mllm_refine.components.input_refiner import InputRefiner, PrefillView, RefineContext
from mllm_refine.components.kinds import KINDS, PART_KEYS, PART_KINDS, PartKind
from mllm_refine.components.layer_selector import LayerSelector
from mllm_refine.components.logit_combiner import LogitCombiner
from mllm_refine.components.needs import Needs
from mllm_refine.components.step_view import StepView
from mllm_refine.data.sample import Sample

__all__ = [
    "AttentionRow",
    "Branch",
    "BranchAdapter",
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
    "PrefillView",
    "RefineContext",
    "Sample",
    "StepView",
    "first_grid_maps",
    "resolve_layers",
]
