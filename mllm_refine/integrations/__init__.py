"""Integrations with the tools the field evaluates with.

``lmms_eval_manifest`` is the entry point lmms-eval loads (group ``lmms_eval.models``). It lives
here, apart from the model class, so that importing ``mllm_refine.integrations.lmms_eval`` first
(which imports lmms-eval, which loads its entry points) never reenters a half-imported module.
"""

from __future__ import annotations

from typing import Any


def lmms_eval_manifest() -> Any:
    """lmms-eval's ``ModelManifest`` of the ``mllm_refine`` model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mllm_refine", simple_class_path="mllm_refine.integrations.lmms_eval.RefinedLMM")
