"""Sampling with a seed repeats run to run, and the run folder alone reproduces the run."""

from __future__ import annotations

import json

import yaml

from mllm_refine.cli import main


def test_same_recipe_and_seed_give_identical_samples(tmp_path, good_manifest, helpers):
    recipe = helpers["recipe"](tmp_path / "r.yaml", f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {good_manifest}}}\n"
                               "decode: {max_new_tokens: 8, batch_size: 2, do_sample: true, temperature: 1.0, seed: 7}\n")  # fmt: skip
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    assert main(["run", str(recipe), "-o", str(first)]) == 0
    # the second run starts from what the first run folder recorded, not from the original file
    assert main(["run", str(first / "recipe.yaml"), "-o", str(again)]) == 0
    assert main(["run", str(recipe), "-o", str(other), "decode.seed=8"]) == 0
    assert (first / "predictions.jsonl").read_bytes() == (again / "predictions.jsonl").read_bytes()
    tokens = lambda run: [r["tokens"] for r in helpers["records"](run / "predictions.jsonl").values()]  # noqa: E731
    assert tokens(first) != tokens(other)  # sampling is on: another seed draws other tokens
    summary = json.loads((first / "summary.json").read_text())
    assert summary["seed"] == 7 and summary["provenance"]["versions"]["torch"] and summary["provenance"]["device"]["dtype"]
    assert "git" in summary["provenance"]
    assert yaml.safe_load((first / "recipe.yaml").read_text())["decode"]["seed"] == 7
