"""Safe loading: no YAML tags that build objects, remote code only on a double opt-in, weights
only through safetensors or ``weights_only`` loads. (Manifest paths that leave their folder are
covered in test_bad_samples.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mllm_refine.cli import main
from mllm_refine.models import ModelLoadError, allow_remote_code, load_model

ROOT = Path(__file__).resolve().parents[2]
PICKLE = (r"^\s*import (c?pickle|dill|joblib)\b", r"^\s*from (c?pickle|dill|joblib) import", r"use_safetensors\s*=\s*False")


def test_a_python_tag_in_a_recipe_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nmodel: {{path: tiny-llava}}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{recipe}:1: not a valid recipe YAML" in err
    assert not marker.exists()


@pytest.mark.parametrize("in_recipe, flag, rc", [(True, False, 2), (True, True, 0), (False, True, 0)])
def test_remote_code_needs_the_recipe_and_the_command_line(in_recipe, flag, rc, tmp_path, good_manifest, capsys, monkeypatch):
    seen = []
    import mllm_refine.lightning.module as module

    real = module.load_model
    monkeypatch.setattr(module, "load_model", lambda **kw: seen.append(kw.get("trust_remote_code", False)) or real(**kw))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: tiny-llava, trust_remote_code: {str(in_recipe).lower()}}}\n"
                      f"data: {{name: manifest, path: {good_manifest}, limit: 1}}\ndecode: {{max_new_tokens: 1}}\n")  # fmt: skip
    args = ["run", str(recipe), "-o", str(tmp_path / "run"), *(["--trust-remote-code"] if flag else [])]
    try:
        assert main(args) == rc
    finally:
        allow_remote_code(False)
    if rc == 2:
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (f"{recipe}: model.trust_remote_code: true runs the checkpoint's own code; "
                                         "it also needs --trust-remote-code on the command line") in err  # fmt: skip
        assert seen == []  # refused before any model load
    else:
        assert seen == [in_recipe]  # on only when both ask for it


def test_load_model_refuses_remote_code_without_the_command_line():
    allow_remote_code(False)
    with pytest.raises(ModelLoadError, match="also needs --trust-remote-code"):
        load_model("tiny-llava", trust_remote_code=True)


def test_no_pickle_loads_in_the_sources():
    """Weights come through safetensors or ``torch.load(weights_only=True)``; nothing unpickles."""
    sources = [p for d in ("mllm_refine", "plugins", "scripts", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    bad = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                bad.append(f"{path}: {m.group(0)}")
        for pattern in PICKLE:
            bad += [f"{path}: {m.group(0).strip()}" for m in re.finditer(pattern, text, re.M)]
    assert not bad, bad
