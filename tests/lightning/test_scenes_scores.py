"""Runs on easy-VQA scenes: scores by size bucket, the localisation of a refiner's map, compare."""

from __future__ import annotations

import json
from pathlib import Path

from mllm_refine.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCENES = ("model.path=tiny-llava", "data={name: easy_vqa_scenes, split: test, n: 3}", "decode.max_new_tokens=2")


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_scores_by_size_localisation_and_compare(tmp_path, capsys):
    base, crop = tmp_path / "vanilla", tmp_path / "vicrop"
    assert main(["run", str(ROOT / "recipes/vanilla.yaml"), "--output", str(base), *SCENES]) == 0
    assert main(["run", str(ROOT / "recipes/vicrop_rel.yaml"), "--output", str(crop), *SCENES]) == 0
    records = _lines(base / "predictions.jsonl")
    buckets = {}
    for r in records:
        if r["meta"]["size_bucket"] is not None:
            buckets[r["meta"]["size_bucket"]] = buckets.get(r["meta"]["size_bucket"], 0) + 1
    scores = json.loads((base / "scores.json").read_text())
    assert {b: v["n"] for b, v in scores["by_size"].items()} == buckets
    assert list(scores["by_size"]) == [b for b in ("small", "medium", "large") if b in buckets]
    assert "localisation" not in scores  # vanilla writes no map
    assert "localisation of meta.vicrop.map: pointing game" in capsys.readouterr().out
    located = json.loads((crop / "scores.json").read_text())["localisation"]["meta.vicrop.map"]
    assert located["n"] == sum(buckets.values()) and 0.0 <= located["pointing_game"] <= 1.0
    assert 0.0 <= located["mass_in_box"] <= 1.0 and set(located["by_size"]) == set(buckets)
    capsys.readouterr()
    assert main(["compare", str(base), str(crop), "-o", str(tmp_path / "cmp.md")]) == 0
    text = capsys.readouterr().out
    assert "By target size (easy_vqa_scenes; meta.size_bucket):" in text
    row = next(line for line in text.splitlines() if line.startswith("| vanilla |") and "n=" in line)
    assert row.count("(baseline)") == len(buckets)


def test_a_map_metric_is_refused_as_the_answer_metric(tmp_path, capsys):
    code = main(["run", str(ROOT / "recipes/vanilla.yaml"), "--output", str(tmp_path / "r"), *SCENES, "metric=pointing_game"])
    err = capsys.readouterr().err
    assert code == 2 and "metric: 'pointing_game' scores importance maps" in err and len(err.strip().splitlines()) == 1
