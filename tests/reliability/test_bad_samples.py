"""Bad samples in a manifest: each gets one error line naming it, the job goes on, exit code 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mllm_refine.cli import main
from mllm_refine.data.manifest import to_rgb

GOOD = ["ok", "gray", "rgba", "deep16", "numeric"]
# sample id -> what its error line must contain (besides the id)
BAD = {
    "missing": ["images/missing.png", "file not found"],
    "corrupt": ["images/corrupt.png", "cannot read image: cannot identify image file"],
    "truncated": ["images/truncated.png", "cannot read image: image file is truncated"],
    "empty_file": ["images/empty.png", "empty (0 bytes)"],
    "bomb": ["images/big.png", "64x64 = 4096 pixels is over the limit of 2000 (data.max_pixels)"],
    "blank_question": ["the question is empty"],
    "not_utf8": ["m.jsonl:", "not UTF-8"],
    "too_long": ["over the model's context length 1024"],
    "dotdot": ["../outside.png", "outside the manifest's folder", "data.allow_outside_root=true"],
    "absolute": ["outside the manifest's folder"],
    "surrogate": ["question: holds an unpaired surrogate U+D800 at character 5, not text"],
}


def _manifest(root: Path, helpers: dict[str, Any]) -> Path:
    img = helpers["image"]
    data = root / "data"
    img(data / "images" / "ok.png")
    img(data / "images" / "gray.png", mode="L")
    img(data / "images" / "rgba.png", mode="RGBA")
    img(data / "images" / "deep16.png", mode="I;16")
    img(data / "images" / "big.png", size=64)
    (data / "images" / "corrupt.png").write_bytes(b"not a png")
    whole = img(root / "scratch.png", size=40).read_bytes()
    (data / "images" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (data / "images" / "empty.png").write_bytes(b"")
    outside = img(root / "outside.png")
    q = "what color is it?"
    rows: list[Any] = [{"id": g, "image": f"images/{g}.png", "question": q, "answers": ["red"]} for g in GOOD[:-1]]
    rows.append({"id": "numeric", "image": "images/ok.png", "question": q, "answers": [3, 2.5, True]})
    rows += [
        {"id": "missing", "image": "images/missing.png", "question": q},
        {"id": "corrupt", "image": "images/corrupt.png", "question": q},
        {"id": "truncated", "image": "images/truncated.png", "question": q},
        {"id": "empty_file", "image": "images/empty.png", "question": q},
        {"id": "bomb", "image": "images/big.png", "question": q},
        {"id": "blank_question", "image": "images/ok.png", "question": " \t "},
        b'{"id": "not_utf8", "image": "images/ok.png", "question": "caf\xe9?"}',
        {"id": "too_long", "image": "images/ok.png", "question": "red " * 1100},
        {"id": "dotdot", "image": "../outside.png", "question": q},
        {"id": "absolute", "image": str(outside), "question": q},
        {"id": "surrogate", "image": "images/ok.png", "question": "what\ud800 color?"},  # valid JSON: the escape \\ud800
    ]
    path = helpers["manifest"](data / "m.jsonl", rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte order mark, as some editors write
    return path


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory, helpers: dict[str, Any]) -> dict[str, Any]:
    """One CLI run over every bad case and a few good ones."""
    root = tmp_path_factory.mktemp("bad")
    manifest = _manifest(root, helpers)
    text = (f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {manifest}, max_pixels: 2000}}\n"
            "decode: {max_new_tokens: 3, batch_size: 4}\n")  # fmt: skip
    recipe = helpers["recipe"](root / "r.yaml", text)
    out = root / "run"
    rc = main(["run", str(recipe), "-o", str(out)])
    return {"rc": rc, "out": out, "records": helpers["records"](out / "predictions.jsonl"),
            "summary": json.loads((out / "summary.json").read_text())}  # fmt: skip


def test_the_job_goes_on_and_counts_failures(bad_run):
    assert bad_run["rc"] == 3
    assert set(bad_run["records"]) == set(GOOD) | set(BAD)
    assert bad_run["summary"]["failed"] == len(BAD) and bad_run["summary"]["written"] == len(GOOD) + len(BAD)


@pytest.mark.parametrize("sample", GOOD)
def test_grayscale_rgba_and_16_bit_images_are_decoded(bad_run, sample):
    record = bad_run["records"][sample]
    assert record["error"] is None and record["tokens"]


@pytest.mark.parametrize("sample", sorted(BAD))
def test_each_bad_sample_gets_one_line_naming_it(bad_run, sample):
    error = bad_run["records"][sample]["error"]
    assert error and "\n" not in error and f"'{sample}'" in error
    for part in BAD[sample]:
        assert part in error, error


def test_fail_fast_stops_at_the_first_and_keeps_what_was_written(tmp_path, helpers, capsys):
    helpers["image"](tmp_path / "images" / "ok.png")
    rows = [{"id": i, "image": f"images/{i}.png", "question": "what color is it?"} for i in ("ok", "missing", "ok2")]
    rows[2]["image"] = "images/ok.png"
    manifest = helpers["manifest"](tmp_path / "m.jsonl", rows)
    recipe = helpers["recipe"](tmp_path / "r.yaml", f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {manifest}}}\n"
                               "decode: {max_new_tokens: 2, batch_size: 1}\n")  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", str(recipe), "-o", str(out), "--fail-fast"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mllm-refine: error: sample 'missing': image 'images/missing.png': file not found")
    assert list(helpers["records"](out / "shards" / "rank-00000.jsonl")) == ["ok"]
    assert not (out / "predictions.jsonl").exists()


def test_allow_outside_root_lets_a_path_leave_the_manifest_folder(tmp_path, helpers):
    helpers["image"](tmp_path / "shared" / "x.png")
    manifest = helpers["manifest"](tmp_path / "data" / "m.jsonl", [{"id": "up", "image": "../shared/x.png", "question": "what?"}])
    recipe = helpers["recipe"](tmp_path / "r.yaml", f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {manifest}}}\n"
                               "decode: {max_new_tokens: 2}\n")  # fmt: skip
    assert main(["run", str(recipe), "-o", str(tmp_path / "refused")]) == 3
    assert main(["run", str(recipe), "-o", str(tmp_path / "allowed"), "data.allow_outside_root=true"]) == 0
    assert helpers["records"](tmp_path / "allowed" / "predictions.jsonl")["up"]["error"] is None


def test_16_bit_grayscale_is_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(deep))[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    rgba = Image.fromarray(np.full((1, 1, 4), 7, dtype=np.uint8), mode="RGBA")
    assert to_rgb(rgba).mode == "RGB" and np.asarray(to_rgb(rgba))[0, 0].tolist() == [7, 7, 7]


def test_numeric_answers_are_read_as_text_and_scored(bad_run):
    assert bad_run["records"]["numeric"]["answers"] == ["3", "2.5", "true"]
    assert bad_run["records"]["numeric"]["error"] is None


def test_a_byte_order_mark_is_read_past(bad_run):
    assert "ok" in bad_run["records"] and bad_run["records"]["ok"]["error"] is None  # the first line
