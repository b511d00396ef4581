"""`mllm-refine compare` over run folders with known predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mllm_refine.cli import main
from mllm_refine.compare import paired_bootstrap
from mllm_refine.metrics import POPE, ExactMatch


def _run(folder: Path, name: str, predictions: list[str], answers: list[str], parts: bool, metric: str = "exact_match",
         data: dict | None = None) -> str:  # fmt: skip
    folder.mkdir(parents=True)
    recipe = {"name": name, "model": {"path": "tiny-llava"}, "data": data or {"name": "shapes", "n": len(predictions)}}
    if parts:
        recipe["layer_selector"] = {"name": "hellinger_shift"}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    rows = [{"id": f"q{i}", "prediction": p, "answers": [a], "error": None} for i, (p, a) in enumerate(zip(predictions, answers))]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "scores.json").write_text(json.dumps({"metric": metric}))
    return str(folder)


def _interval(cell: str) -> tuple[float, float]:
    lo, hi = cell.split("95% CI ")[1].split(",")[0].split(" … ")
    return float(lo.replace("−", "-")), float(hi.replace("−", "-"))


def test_compare_table_with_deltas_and_intervals(tmp_path, capsys):
    answers = ["yes", "no"] * 4
    base = _run(tmp_path / "vanilla", "vanilla", ["maybe"] * 8, answers, parts=False)  # 0 / 8
    right = _run(tmp_path / "a", "always_right", answers, answers, parts=True)  # 8 / 8: every pair gains 1
    yes = _run(tmp_path / "b", "says_yes", ["yes"] * 8, answers, parts=True)  # 4 / 8: half the pairs gain 1
    no = _run(tmp_path / "c", "says_no", ["no"] * 8, answers, parts=True)
    out = tmp_path / "cmp.md"
    assert main(["compare", right, yes, base, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in printed.splitlines() if line.startswith("| ")}
    assert rows["vanilla"] == "| vanilla | 0.0 (baseline) |"
    assert rows["always_right"] == "| always_right | 100.0 (+100.0, 95% CI +100.0 … +100.0, n=8) |"
    cell = rows["says_yes"].split(" | ")[1]
    lo, hi = _interval(cell)
    assert cell.startswith("50.0 (+50.0,") and 0 < lo < 50 < hi < 100
    assert "shapes: exact_match; baseline vanilla" in printed
    # Seeded: the same table twice.
    assert main(["compare", right, yes, base, "-o", str(out)]) == 0
    assert capsys.readouterr().out == printed
    # Against --baseline says_yes, says_no gains and loses four pairs each: delta 0, the interval
    # on both sides of it.
    assert main(["compare", no, yes, "--baseline", yes, "-o", str(out)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| says_no"))
    lo, hi = _interval(row)
    assert "50.0 (+0.0, 95% CI" in row and lo < 0 < hi


def test_two_vanilla_runs_need_a_baseline(tmp_path, capsys):
    a = _run(tmp_path / "a", "a", ["x"], ["x"], parts=False)
    b = _run(tmp_path / "b", "b", ["y"], ["x"], parts=False)
    assert main(["compare", a, b]) == 2
    assert "several runs without parts" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_paired_bootstrap_of_a_ratio_metric():
    m = POPE()
    labels = [["yes"], ["no"]] * 10
    a = m.sample_stats(["yes", "no"] * 10, labels)  # all right
    b = m.sample_stats(["yes"] * 20, labels)  # says yes to everything: half right
    d, lo, hi = paired_bootstrap(m, a, b, resamples=200, seed=1)
    assert d == pytest.approx(0.5) and 0.2 < lo <= d <= hi < 0.8
    assert paired_bootstrap(m, a, b, resamples=200, seed=1) == (d, lo, hi)
    e = ExactMatch()
    same = e.sample_stats(["x"] * 5, [["x"]] * 5)
    assert paired_bootstrap(e, same, same, 50) == (0.0, 0.0, 0.0)
    assert torch.equal(same.sum(0), torch.tensor([5.0, 5.0], dtype=torch.float64))


def test_compare_lists_each_runs_model_and_data_and_flags_mixed_models(tmp_path, capsys):
    answers = ["yes", "no"] * 2
    base = _run(tmp_path / "vanilla", "vanilla", answers, answers, parts=False)
    other = _run(tmp_path / "a", "dualpd", answers, answers, parts=True)
    recipe = yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())
    recipe["model"] = {"path": "/ckpts/llava-1.5-7b-hf", "dtype": "bfloat16"}
    (tmp_path / "a" / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["compare", base, other, "-o", str(tmp_path / "cmp.md")]) == 0
    printed = capsys.readouterr().out
    assert f"| {base} | vanilla | tiny-llava | n: 4, name: shapes |" in printed
    assert f"| {other} | dualpd | /ckpts/llava-1.5-7b-hf (bfloat16) | n: 4, name: shapes |" in printed
    assert "the runs use 2 models" in printed  # a delta across models is not a method's effect


def test_compare_lists_every_value_of_a_metric_that_has_several(tmp_path, capsys):
    answers = ["yes", "no"] * 4  # 4 positives, 4 negatives
    base = _run(tmp_path / "vanilla", "vanilla", answers, answers, parts=False, metric="pope")  # all right
    # Says yes to everything: accuracy 4/8, precision 4/8, recall 4/4, F1 2/3, yes-ratio 8/8.
    yes = _run(tmp_path / "yes", "says_yes", ["yes"] * 8, answers, parts=True, metric="pope")
    out = tmp_path / "cmp.md"
    assert main(["compare", base, yes, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    head = lines.index("| recipe | accuracy | precision | recall | f1 | yes_ratio |")
    assert lines[head + 2] == "| vanilla | 100.0 (baseline) | 100.0 (baseline) | 100.0 (baseline) | 100.0 (baseline) | 50.0 (baseline) |"
    cells = lines[head + 3].split(" | ")[1:]
    assert [c.split(" (")[0] for c in cells] == ["50.0", "50.0", "100.0", "66.7", "100.0"]
    assert cells[2].startswith("100.0 (+0.0, 95% CI +0.0 … +0.0")  # recall: the same on every resample
    assert cells[4].startswith("100.0 (+50.0,")  # yes-ratio: +50 points


def test_one_value_metric_has_no_values_table(tmp_path, capsys):
    answers = ["yes", "no"]
    base = _run(tmp_path / "vanilla", "vanilla", answers, answers, parts=False)
    assert main(["compare", base, "-o", str(tmp_path / "cmp.md")]) == 0
    assert "Every value of" not in capsys.readouterr().out
