"""Bad recipes and models through the CLI: exit code 2, one stderr line naming the file and key,
and (for everything checkable without the model) no model load."""

from __future__ import annotations

import json

import pytest

import mllm_refine.lightning.module as module
from mllm_refine.cli import main

BASE = "model: {path: tiny-llava}\ndata: {name: shapes, n: 2}\ndecode: {max_new_tokens: 2}\n"
BEFORE_LOAD = {
    "unknown_component": ("logit_combiner: {name: layer_contrst}\nlayer_selector: {name: hellinger_shift}\n",
                          "logit_combiner.name: unknown logit combiner 'layer_contrst' (did you mean 'layer_contrast'?)"),
    "misspelled_parameter": ("head_filters: [{name: head_norm_filter, gama: 0.5}]\n",
                             "head_filters[0].gama: unknown parameter (did you mean 'gamma'?)"),
    "wrong_type": ("head_filters: [{name: head_norm_filter, ratio: lots}]\n", "head_filters[0].ratio: expected float, got 'lots'"),
    "conflicting": ("logit_combiner: {name: layer_contrast}\n", "logit_combiner 'layer_contrast' contrasts with a selected layer"),
    "extends_cycle": ("extends: r.yaml\n", "extends: cycle:"),
    "unknown_metric": ("metric: exact_mach\n", "metric: unknown metric 'exact_mach' (did you mean 'exact_match'?)"),
    "key_given_twice": ("metric: exact_match\nmetric: pope\n", "r.yaml:5: not a valid recipe YAML (key 'metric' is given twice (first on line 4))"),
    "alias_bomb": ("".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "x"] * 9) + "]\n" for i in range(9)),
                   "expands to more than 100000 values through its aliases"),
    "no_devices": ("trainer: {devices: 0}\n", "trainer.devices: 0 names no device"),
}  # fmt: skip
if not __import__("torch").cuda.is_available():
    BEFORE_LOAD["gpu_without_gpu"] = ("trainer: {accelerator: gpu}\n", "trainer.accelerator: 'gpu', but this machine has no usable GPU")
OVERRIDES = {
    "value_not_a_section": ("decode.batch_size.x=1", "override 'decode.batch_size.x=1': decode.batch_size is a value (8), not a section"),
    "broken_yaml_value": ("decode.max_new_tokens=[1", "override 'decode.max_new_tokens=[1': the value is not YAML"),
    "limit_not_a_number": ("data.limit=abc", "data.limit: expected int or NoneType, got 'abc'"),
    "negative_limit": ("data.limit=-5", "data.limit: expected a count of samples (0 or more), got -5"),
}
AFTER_LOAD = {
    "layer_outside_model": ("layer_selector: {name: hellinger_shift, layers: [99]}\nlogit_combiner: {name: layer_contrast}\n",
                            "layer_selector.layers: layer 99 is outside 2.."),
    "head_ratio_outside_0_1": ("head_filters: [{name: head_norm_filter, ratio: 1.5}]\n", "head_filters[0].ratio: 1.5 is outside 0..1"),
}  # fmt: skip


def _one_line(capsys, after_log: bool = False) -> str:
    """The error line; with ``after_log`` the run's start-up line may come before it."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == (2 if after_log else 1) and lines[-1].startswith("mllm-refine: error: "), lines
    return lines[-1]


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(**kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(module, "load_model", refuse)


@pytest.mark.parametrize("case", sorted(BEFORE_LOAD))
def test_refused_before_any_model_loads(case, tmp_path, capsys, no_model_load):
    extra, message = BEFORE_LOAD[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + extra)
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 2
    err = _one_line(capsys)
    assert f"{recipe}:" in err and message in err, err
    assert not (tmp_path / "run" / "shards").exists()


@pytest.mark.parametrize("case", sorted(AFTER_LOAD))
def test_settings_that_need_the_model_are_one_line_naming_file_and_key(case, tmp_path, capsys):
    extra, message = AFTER_LOAD[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + extra)
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 2
    err = _one_line(capsys, after_log=True)
    assert err.startswith(f"mllm-refine: error: {recipe}: {message}"), err


@pytest.mark.parametrize(
    "folder, message",
    [
        ("missing", "model.path: checkpoint folder not found"),
        ("gpt2", "model type 'gpt2' is not supported; supported model types: llava, llava_next, qwen2_5_vl, qwen2_vl, qwen3_vl"),
        ("no_config", "has no config.json (not a transformers checkpoint folder)"),
    ],
)
def test_unsupported_model_or_missing_checkpoint_names_what_is_supported(folder, message, tmp_path, capsys, no_model_load):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "no_config").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: {tmp_path / folder}}}\ndata: {{name: shapes, n: 2}}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 2
    assert message in _one_line(capsys)


@pytest.mark.parametrize("case", sorted(OVERRIDES))
def test_bad_overrides_are_one_line_naming_the_key(case, tmp_path, capsys, no_model_load):
    override, message = OVERRIDES[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE.replace("decode: {max_new_tokens: 2}", "decode: {max_new_tokens: 2, batch_size: 8}"))
    assert main(["run", str(recipe), "-o", str(tmp_path / "run"), override]) == 2
    err = _one_line(capsys)
    assert message in err, err


def test_a_file_given_as_model_path_is_named_as_a_file(tmp_path, capsys, no_model_load):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    assert main(["run", str(recipe), "-o", str(tmp_path / "run"), f"model.path={weights}"]) == 2
    assert f"model.path: {weights} is a file; a checkpoint is the folder that holds config.json" in _one_line(capsys)
