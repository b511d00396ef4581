"""Plugin discovery: built-ins through entry points, fake plugins, conflicts, controls."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from mllm_refine.components import LayerSelector
from mllm_refine.hookspecs import hookimpl
from mllm_refine.plugin_manager import PluginError, get_plugin_manager, get_registry


@dataclass
class LastLayer(LayerSelector):
    """Always the last block."""

    name = "last_layer"

    def candidates(self):
        return [self.info.num_layers]

    def select(self, view):
        return torch.full((view.logits.shape[0],), self.info.num_layers)


class FakePlugin:
    @hookimpl
    def register_components(self, register):
        register(LastLayer)


class DuplicatePlugin:
    @hookimpl
    def register_components(self, register):
        from mllm_refine_plugins.dualpd import HellingerShiftSelector

        register(HellingerShiftSelector)


class BrokenPlugin:
    @hookimpl
    def register_datasets(self, register):
        raise RuntimeError("boom")


@pytest.fixture
def plugin(request):
    """Register a plugin object for one test, then unregister it."""
    pm = get_plugin_manager()
    obj = request.param()
    pm.register(obj, name=request.param.__name__)
    yield obj
    pm.unregister(obj)
    get_registry(refresh=True)


def test_builtins_come_from_entry_points():
    registry = get_registry(refresh=True)
    for kind, name in [("layer_selector", "hellinger_shift"), ("head_filter", "head_norm_filter"),
                       ("logit_combiner", "layer_contrast"), ("adapter", "llava"), ("dataset", "manifest")]:  # fmt: skip
        entry = registry.get(kind, name)
        assert entry.distribution == "mllm-refine"


@pytest.mark.parametrize("plugin", [FakePlugin], indirect=True)
def test_fake_plugin_component_is_registered(plugin):
    entry = get_registry(refresh=True).get("layer_selector", "last_layer")
    assert entry.obj is LastLayer and entry.plugin == "FakePlugin"


@pytest.mark.parametrize("plugin", [DuplicatePlugin], indirect=True)
def test_duplicate_name_names_both_plugins(plugin):
    with pytest.raises(PluginError, match="registered twice: by plugin 'dualpd' .*and by plugin 'DuplicatePlugin'"):
        get_registry(refresh=True)


@pytest.mark.parametrize("plugin", [BrokenPlugin], indirect=True)
def test_raising_hook_names_plugin_and_hook(plugin):
    with pytest.raises(PluginError, match="plugin 'BrokenPlugin' .* failed in hook register_datasets: boom"):
        get_registry(refresh=True)


def _plugins_output(env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-m", "mllm_refine.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_block_and_allow_env_vars():
    blocked = _plugins_output({"MLLM_REFINE_BLOCK_PLUGINS": "dualpd"})
    assert "hellinger_shift" not in blocked and "layer_contrast" in blocked
    allowed = _plugins_output({"MLLM_REFINE_PLUGINS": "adapters,dualpd"})
    assert "hellinger_shift" in allowed and "layer_contrast" not in allowed and "manifest" not in allowed
