"""`mllm-refine run`: predictions, scores, resume, per-sample errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mllm_refine.cli import main
from mllm_refine.testing import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_run_writes_predictions_and_scores_then_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "recipes/dualpd.yaml"), "--output", str(out), *TINY_RUN, "data.n=5", "decode.batch_size=2"]) == 0
    recs = _lines(out / "predictions.jsonl")
    assert [r["id"] for r in recs] == [f"shapes-0-{i:05d}" for i in range(5)]
    assert all(r["recipe"] == "dualpd" and r["error"] is None and "layer" in r["choices"] for r in recs)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["scored"] == 5 and 0.0 <= scores["score"] <= 1.0
    assert "exact_match =" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 5 and summary["tokens"] > 0 and summary["seed"] == 0
    assert set(summary["provenance"]) == {"versions", "git", "device"}
    assert summary["provenance"]["versions"]["torch"] and summary["provenance"]["device"]["attention"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["name"] == "dualpd"
    # A torn last line in a shard (killed mid-write) is dropped, then the rerun completes the set once each.
    with (out / "shards" / "rank-00000.jsonl").open("a") as f:
        f.write('{"id": "shapes-0-00005", "predic')
    assert main(["run", str(ROOT / "recipes/dualpd.yaml"), "--output", str(out), *TINY_RUN, "data.n=7"]) == 0
    ids = [r["id"] for r in _lines(out / "predictions.jsonl")]
    assert ids == [f"shapes-0-{i:05d}" for i in range(7)]
    assert "2 decoded, 5 resumed" in capsys.readouterr().out
    # A rerun over fewer samples merges only those.
    assert main(["run", str(ROOT / "recipes/dualpd.yaml"), "--output", str(out), *TINY_RUN, "data.n=3"]) == 0
    assert [r["id"] for r in _lines(out / "predictions.jsonl")] == ids[:3]
    assert "0 decoded, 3 resumed" in capsys.readouterr().out


def test_bad_sample_gets_error_record_and_job_goes_on(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(images / "ok.png")
    (images / "broken.png").write_bytes(b"not a png")
    rows = [
        {"id": "a", "image": "images/ok.png", "question": "what color is it?", "answers": ["black"]},
        {"id": "b", "image": "images/missing.png", "question": "what color is it?"},
        {"id": "c", "image": "images/broken.png", "question": "what color is it?"},
        {"id": "d", "image": "images/ok.png", "question": "is it red?", "answers": ["no"]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    rc = main(["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(out), *TINY_RUN, "data.name=manifest", f"data.path={manifest}", "data.n=null"])
    assert rc == 2  # `n` is not a manifest parameter
    assert "data.n: unknown parameter of dataset 'manifest'" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {manifest}}}\n")
    assert main(["run", str(recipe), "-o", str(out)]) == 3
    recs = {r["id"]: r for r in _lines(out / "predictions.jsonl")}
    assert set(recs) == {"a", "b", "c", "d"}
    assert recs["a"]["error"] is None and recs["d"]["error"] is None
    assert "missing.png" in recs["b"]["error"] and "broken.png" in recs["c"]["error"]
    assert all("\n" not in r["error"] for r in (recs["b"], recs["c"]))
    assert "2 failed" in capsys.readouterr().out


def test_missing_model_folder_is_one_line(tmp_path, capsys):
    rc = main(["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(tmp_path), f"model.path={tmp_path}/nope"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.path: checkpoint folder not found" in err and err.count("\n") == 1


def test_local_checkpoint_folder_loads_like_the_registered_model(tmp_path):
    from mllm_refine.models import load_model
    from mllm_refine.testing.tiny_models import tiny_llava

    model, processor = tiny_llava()
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_proc = load_model(str(tmp_path / "ckpt"))
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert (a == b).all()
    assert loaded_proc.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_references_of_any_json_become_text():
    from mllm_refine.data.sample import answer_texts

    assert answer_texts(["a", 3, 2.5, True, None]) == ["a", "3", "2.5", "true", "null"]
    assert answer_texts(7) == ["7"]
