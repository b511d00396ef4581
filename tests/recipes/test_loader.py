"""Recipes: checked against typed parameters, overridden from the command line, safe YAML only."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_refine.recipes import RecipeError, load_recipe, parse_override, resolve_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["vanilla", "dualpd", "dualpd_layer", "dualpd_heads"])
def test_shipped_recipes_load(name):
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert r.name == name


def test_dualpd_recipe_builds_its_parts():
    r = load_recipe(ROOT / "recipes" / "dualpd.yaml")
    assert r.parts.layer_selector.name == "hellinger_shift"
    assert r.parts.logit_combiner.alpha == 0.1
    assert r.parts.head_filters[0].ratio == 0.15 and r.parts.head_filters[0].gamma == 0.9


def test_overrides_are_typed():
    r = load_recipe(ROOT / "recipes" / "dualpd.yaml", ["head_filters.0.ratio=0.25", "layer_selector.layers=[3, 4]",
                                                      "decode.do_sample=true", "data.n=4"])  # fmt: skip
    assert r.parts.head_filters[0].ratio == 0.25
    assert r.parts.layer_selector.layers == [3, 4]
    assert r.decode.do_sample is True and r.data["n"] == 4
    assert parse_override("a.b=hello") == (["a", "b"], "hello")


@pytest.mark.parametrize(
    "override, message",
    [
        ("head_filters.0.ratoi=0.2", r"head_filters\[0\]\.ratoi: unknown parameter \(did you mean 'ratio'\?\)"),
        ("head_filters.0.ratio=abc", r"head_filters\[0\]\.ratio: expected float, got 'abc'"),
        ("layer_selector.name=helinger", r"layer_selector\.name: unknown layer selector 'helinger' \(did you mean 'hellinger_shift'\?\)"),
        ("logit_combiner.space=probs", r"logit_combiner\.space: 'probs' is not one of 'logits', 'log_softmax'"),
        ("decode.max_new_tokens=0", r"decode\.max_new_tokens: must be at least 1"),
        ("modle.path=x", r"modle: unknown key \(did you mean 'model'\?\)"),
    ],
)
def test_bad_values_name_file_and_key(override, message):
    with pytest.raises(RecipeError, match=r"dualpd\.yaml: " + message):
        load_recipe(ROOT / "recipes" / "dualpd.yaml", [override])


def test_conflicting_parts_are_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: {path: tiny-llava}\nlogit_combiner: {name: layer_contrast}\n")
    with pytest.raises(RecipeError, match="r.yaml: logit_combiner 'layer_contrast' contrasts with a selected layer"):
        load_recipe(p)


def test_python_tags_are_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\nmodel: {path: tiny-llava}\n")
    with pytest.raises(RecipeError, match="evil.yaml:1: not a valid recipe YAML"):
        load_recipe(p)


@pytest.mark.parametrize("order", [0, 1])
def test_a_new_data_name_replaces_the_data_block(order, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    overrides = ["data.name=manifest", f"data.path={manifest}"]
    raw, origins, _ = resolve_recipe("dualpd", overrides[::-1] if order else overrides)
    assert raw["data"] == {"name": "manifest", "path": str(manifest)}  # easy_vqa's split is gone
    assert ("data", "split") not in origins and origins[("data", "name")] == "override data.name=manifest"


def test_a_new_part_name_replaces_the_part_and_the_same_name_keeps_it():
    raw, _, _ = resolve_recipe("dualpd", ["layer_selector.name=dola_jsd"])
    assert raw["layer_selector"] == {"name": "dola_jsd"}  # hellinger_shift's keys are not dola_jsd's
    assert load_recipe("dualpd", ["layer_selector.name=dola_jsd"]).parts.layer_selector.name == "dola_jsd"
    raw, _, _ = resolve_recipe("dualpd", ["data.name=easy_vqa", "data.limit=4"])
    assert raw["data"] == {"name": "easy_vqa", "split": "test", "limit": 4}
