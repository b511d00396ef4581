"""Sweeps, the trainer section, dataset-suggested metrics, and compare on real runs."""

from __future__ import annotations

import json
from pathlib import Path

from mllm_refine.cli import main
from mllm_refine.testing import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_runs_each_stack_into_its_own_folder_then_compares(tmp_path, capsys):
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(
        "name: grid\nmodel: {path: tiny-llava}\ndata: {name: shapes, n: 3}\n"
        "decode: {max_new_tokens: 2, batch_size: 3}\n"
        "sweep:\n"
        "  - {name: plain}\n"
        "  - name: layer\n"
        "    layer_selector: {name: hellinger_shift}\n"
        "    logit_combiner: {name: layer_contrast, alpha: 0.1}\n"
    )
    out = tmp_path / "runs"
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plain: exact_match =" in printed and "layer: exact_match =" in printed
    for name in ("plain", "layer"):
        recs = [json.loads(x) for x in (out / name / "predictions.jsonl").read_text().splitlines()]
        assert [r["recipe"] for r in recs] == [name] * 3
    assert "layer" in json.loads((out / "layer" / "predictions.jsonl").read_text().splitlines()[0])["choices"]
    assert main(["compare", str(out / "layer"), str(out / "plain")]) == 0
    table = capsys.readouterr().out
    assert "| plain | " in table and "(baseline)" in table and "95% CI" in table and (out / "compare.md").is_file()


def test_trainer_section_is_checked_before_any_model_loads(tmp_path, capsys):
    rc = main(["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(tmp_path), "trainer.devcies=2"])
    err = capsys.readouterr().err
    assert rc == 2 and "trainer.devcies: unknown parameter (did you mean 'devices'?)" in err and err.count("\n") == 1
    rc = main(["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(tmp_path), "metric=vqa_acc"])
    assert rc == 2 and "metric: unknown metric 'vqa_acc' (did you mean 'vqa_accuracy'?)" in capsys.readouterr().err


def test_dataset_suggests_its_metric(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16), (255, 255, 255)).save(tmp_path / "img.jpg")
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text("".join(json.dumps({"question_id": i, "image": "img.jpg", "text": "Is there a cat?", "label": lab}) + "\n"
                            for i, lab in enumerate(["yes", "no"])))  # fmt: skip
    out = tmp_path / "run"
    args = ["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(out), *TINY_RUN, "data.name=pope", f"data.path={pope}",
            f"data.images={tmp_path}", "data.n=null", "decode.max_new_tokens=2"]  # fmt: skip
    assert main(args) == 2  # `n` belongs to shapes
    capsys.readouterr()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: tiny-llava}}\ndata: {{name: pope, path: {pope}, images: {tmp_path}}}\ndecode: {{max_new_tokens: 2}}\n")
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["metric"] == "pope" and set(scores["values"]) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert scores["score"] == scores["values"]["accuracy"] == 0.5  # one yes and one no label: any single answer is half right
    assert "r: pope = 0.5000" in capsys.readouterr().out
