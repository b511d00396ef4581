"""Recipe composition: extends with deep merge, cycles, names, overrides, and `recipe show`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mllm_refine.cli import main
from mllm_refine.recipes import RecipeError, load_recipe
from mllm_refine.recipes.loader import resolve_recipe
from mllm_refine.recipes.show import render

ROOT = Path(__file__).resolve().parents[2]
DUALPD = ROOT / "recipes" / "dualpd.yaml"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_extends_a_shipped_recipe_by_name_with_deep_merge(tmp_path):
    p = write(tmp_path, "variant.yaml", """\
extends: dualpd
data: {limit: 4}
logit_combiner: {alpha: 0.2}
head_filters:
  - {name: head_norm_filter, ratio: 0.3}
""")  # fmt: skip
    r = load_recipe(p)
    base = yaml.safe_load(DUALPD.read_text())
    assert r.name == "variant"  # a recipe's name is its own
    assert r.data == {"name": "easy_vqa", "split": "test", "limit": 4}  # mapping merged
    assert r.raw["logit_combiner"] == {**base["logit_combiner"], "alpha": 0.2}
    assert r.raw["head_filters"] == [{"name": "head_norm_filter", "ratio": 0.3}]  # list replaced
    assert r.parts.head_filters[0].gamma == 0.9  # the dropped gamma falls back to its default
    assert r.model == yaml.safe_load((ROOT / "recipes" / "vanilla.yaml").read_text())["model"]  # two levels up


def test_switching_a_part_replaces_it_and_null_removes_it(tmp_path):
    write(tmp_path, "base.yaml", "model: {path: tiny-llava}\nlayer_selector: {name: hellinger_shift, layers: [2, 3]}\n"
                                 "logit_combiner: {name: layer_contrast, alpha: 0.3}\n")  # fmt: skip
    p = write(tmp_path, "child.yaml", "extends: base.yaml\nlayer_selector: null\nlogit_combiner: null\n"
                                      "head_filters: [{name: head_norm_filter}]\n")  # fmt: skip
    r = load_recipe(p)
    assert r.parts.layer_selector is None and r.parts.logit_combiner is None
    assert [f.name for f in r.parts.head_filters] == ["head_norm_filter"]
    write(tmp_path, "data.yaml", "extends: base.yaml\ndata: {name: shapes, n: 3}\n")
    other = write(tmp_path, "other.yaml", "extends: data.yaml\ndata: {name: manifest, path: x.jsonl}\n")
    assert load_recipe(other).data == {"name": "manifest", "path": "x.jsonl"}  # no `n` left from shapes


def test_extends_a_list_in_order(tmp_path):
    write(tmp_path, "a.yaml", "model: {path: tiny-llava}\ndecode: {max_new_tokens: 3, batch_size: 2}\n")
    write(tmp_path, "b.yaml", "decode: {max_new_tokens: 5}\n")
    p = write(tmp_path, "c.yaml", "extends: [a.yaml, b.yaml]\n")
    r = load_recipe(p)
    assert (r.decode.max_new_tokens, r.decode.batch_size) == (5, 2)


def test_cycles_are_refused(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nmodel: {path: tiny-llava}\n")
    write(tmp_path, "b.yaml", "extends: sub/c.yaml\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "c.yaml", "extends: ../a.yaml\n")
    with pytest.raises(RecipeError, match=r"c\.yaml: extends: cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_recipe(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "extends, message",
    [
        ("dualdp", r"r\.yaml: extends: no recipe named 'dualdp' \(did you mean 'dualpd'\?\)"),
        ("missing.yaml", r"r\.yaml: extends: recipe file not found: .*missing\.yaml"),
        ("[1]", r"r\.yaml: extends: expected a recipe name or path, or a list of them"),
    ],
)
def test_bad_extends_names_file_and_key(tmp_path, extends, message):
    p = write(tmp_path, "r.yaml", f"extends: {extends}\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(p)


def test_a_recipe_name_loads_like_its_file():
    assert load_recipe("dualpd").raw == load_recipe(DUALPD).raw


def test_show_prints_resolved_yaml_with_origins(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    p = write(tmp_path, "variant.yaml", "extends: dualpd\nname: variant\nlogit_combiner: {alpha: 0.2}\n")
    assert main(["recipe", "show", str(p), "decode.max_new_tokens=3", "head_filters.0.ratio=0.2"]) == 0
    out = capsys.readouterr().out
    raw, _, _ = resolve_recipe(p, ["decode.max_new_tokens=3", "head_filters.0.ratio=0.2"])
    assert yaml.safe_load(out) == raw  # the comments are only comments
    lines = {line.split("#")[0].strip(): line.split("#")[1].strip() for line in out.splitlines() if "#" in line}
    dualpd_lines = DUALPD.read_text().splitlines()
    alpha_line = next(i for i, t in enumerate(dualpd_lines, 1) if t.strip().startswith("gamma:"))
    assert lines["name: variant"] == f"{p}:2"
    assert lines["alpha: 0.2"] == f"{p}:3"
    assert lines["gamma: 0.9"] == f"recipes/dualpd.yaml:{alpha_line}"
    assert lines["max_new_tokens: 3"] == "override decode.max_new_tokens=3"
    assert lines["- name: head_norm_filter"].startswith("recipes/dualpd.yaml:")
    assert lines["ratio: 0.2"] == "override head_filters.0.ratio=0.2"


def test_show_falls_back_to_the_ancestors_origin_and_aligns_comments():
    raw = {"model": {"path": "x", "dtype": "float32"}, "stop": []}
    over = "override model={path: x, dtype: float32}"
    lines = render(raw, {("model",): over, ("stop",): "r.yaml:4"}).splitlines()
    assert lines[0] == "model:"
    assert [line.split("# ")[1] for line in lines[1:]] == [over, over, "r.yaml:4"]
    assert len({line.index("#") for line in lines[1:]}) == 1


def test_show_reports_a_bad_recipe_in_one_line(tmp_path, capsys):
    p = write(tmp_path, "bad.yaml", "extends: dualpd\nhead_filters: [{name: head_norm_filter, ratoi: 1}]\n")
    assert main(["recipe", "show", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml: head_filters[0].ratoi: unknown parameter (did you mean 'ratio'?)" in err
