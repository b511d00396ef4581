"""Plugin discovery: built-ins through entry points, fake plugins, conflicts, controls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from mllm_refine import hookspecs, plugin_manager
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
    with pytest.raises(PluginError, match=r"plugin 'BrokenPlugin' \(.*\) failed in hook register_datasets: RuntimeError: boom"):
        get_registry(refresh=True)


class NotAComponentPlugin:
    @hookimpl
    def register_components(self, register):
        register(dict)


class WrongArityPlugin:
    @hookimpl
    def register_metrics(self, register):
        register(lambda: None)


class MissingRecipePlugin:
    @hookimpl
    def register_recipes(self, register):
        register("ghost", "/nonexistent/ghost.yaml")


@pytest.mark.parametrize(
    "plugin, message",
    [
        (NotAComponentPlugin, r"plugin 'NotAComponentPlugin' .* in hook register_components: <class 'dict'> is not a subclass of LayerSelector"),
        (WrongArityPlugin, r"plugin 'WrongArityPlugin' .* in hook register_metrics: register\(\) takes \(name, factory\)"),
        (MissingRecipePlugin, r"plugin 'MissingRecipePlugin' .* in hook register_recipes: recipe 'ghost': file not found"),
    ],
    indirect=["plugin"],
)
def test_bad_registration_names_plugin_and_hook(plugin, message):
    with pytest.raises(PluginError, match=message):
        get_registry(refresh=True)


@pytest.mark.parametrize("plugin", [DuplicatePlugin], indirect=True)
def test_duplicate_name_names_both_distributions(plugin, monkeypatch):
    monkeypatch.setitem(plugin_manager._distributions, "DuplicatePlugin", "mllm-refine-fork")
    with pytest.raises(PluginError) as err:
        get_registry(refresh=True)
    message = str(err.value)
    assert "layer_selector 'hellinger_shift' is registered twice" in message
    assert "'dualpd' (mllm-refine)" in message and "'DuplicatePlugin' (mllm-refine-fork)" in message


def _fresh_manager(monkeypatch, plugins: dict[str, object], **env: str) -> None:
    """Make the next get_plugin_manager() load ``plugins`` as entry points (name -> module)."""
    from importlib.metadata import EntryPoint

    for var in (plugin_manager.ALLOW_ENV, plugin_manager.BLOCK_ENV, plugin_manager.TRACE_ENV):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    for name, module in plugins.items():
        monkeypatch.setitem(sys.modules, f"fake_ep_{name}", module)
    eps = [EntryPoint(name, f"fake_ep_{name}", plugin_manager.ENTRY_POINT_GROUP) for name in plugins]
    monkeypatch.setattr(plugin_manager, "entry_points", lambda group: eps)
    monkeypatch.setattr(plugin_manager, "_pm", None)
    monkeypatch.setattr(plugin_manager, "_registry", None)
    monkeypatch.setattr(plugin_manager, "_distributions", {})


def test_unknown_hook_in_entry_point_names_plugin(monkeypatch):
    typo = types.ModuleType("typo")
    typo.register_component = hookimpl(lambda register: None)  # missing "s"
    _fresh_manager(monkeypatch, {"typo": typo})
    with pytest.raises(PluginError, match=r"plugin 'typo' \(unknown distribution\): unknown hook 'register_component'"):
        get_plugin_manager()


def test_trace_env_var_writes_who_answered_what(monkeypatch, capsys):
    from mllm_refine_plugins import dualpd

    _fresh_manager(monkeypatch, {"dualpd": dualpd}, MLLM_REFINE_TRACE="1")
    get_registry()
    err = capsys.readouterr().err
    assert "mllm-refine trace:   register_components [hook]" in err
    assert "register: <register for plugin 'dualpd' (unknown distribution)>" in err
    assert "plugin 'dualpd' (unknown distribution) registered layer_selector 'hellinger_shift'" in err
    _fresh_manager(monkeypatch, {"dualpd": dualpd})
    get_registry()
    assert "trace" not in capsys.readouterr().err


def _plugins_output(env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-m", "mllm_refine.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_block_and_allow_env_vars():
    blocked = _plugins_output({"MLLM_REFINE_BLOCK_PLUGINS": "dualpd"})
    assert "hellinger_shift" not in blocked and "layer_contrast" in blocked
    allowed = _plugins_output({"MLLM_REFINE_PLUGINS": "dualpd"})
    assert "hellinger_shift" in allowed and "layer_contrast" not in allowed and "dualpd_heads" not in allowed
    # the core plugins load whatever the allow-list says: a run still has its model, data and metric
    for core in ("manifest", "exact_match", "qwen2_vl", "smollm2-135m-easyvqa", "tiny-llava"):
        assert core in allowed, core


def test_core_plugins_cannot_be_blocked():
    env = {**os.environ, "MLLM_REFINE_BLOCK_PLUGINS": "metrics,dualpd"}
    out = subprocess.run([sys.executable, "-m", "mllm_refine.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "mllm-refine: MLLM_REFINE_BLOCK_PLUGINS: 'metrics' is a core plugin and always loads"
    assert "exact_match" in out.stdout and "hellinger_shift" not in out.stdout
    rows = {line.split()[1]: line.split()[2] for line in out.stdout.splitlines()[1:] if len(line.split()) > 3}
    assert rows["exact_match"] == "metrics*" and rows["layer_contrast"] == "layer_contrast"


def test_every_hookspec_is_typed_and_says_since_when():
    specs = [f for f in vars(hookspecs).values() if callable(f) and hasattr(f, "mllm_refine_spec")]
    assert {f.__name__ for f in specs} == set(plugin_manager.HOOK_KINDS)
    for f in specs:
        assert re.search(r"Since \d+\.\d+\.", f.__doc__ or ""), f.__name__
        annotations = f.__annotations__
        assert set(annotations) == {"register", "return"} and annotations["return"] == "None", f.__name__
