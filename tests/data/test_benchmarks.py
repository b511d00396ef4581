"""Benchmarks read from tiny files in their official formats, written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mllm_refine.data.manifest import SampleError
from mllm_refine.lightning.data import build_dataset


def _image(path: Path, colour=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)


def _json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_vqav2_questions_and_annotations(tmp_path):
    _image(tmp_path / "val2014/COCO_val2014_000000000042.jpg")
    q = _json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is it?", "question_id": 420},
        {"image_id": 42, "question": "Is it red?", "question_id": 421}]})  # fmt: skip
    answers = lambda a: [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)]  # noqa: E731
    a = _json(tmp_path / "a.json", {"annotations": [
        {"question_id": 421, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": answers(["yes"] * 10)},
        {"question_id": 420, "image_id": 42, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": answers(["red"] * 9 + ["maroon"])}]})  # fmt: skip
    ds = build_dataset({"name": "vqav2", "questions": q, "annotations": a, "images": str(tmp_path / "val2014")})
    assert len(ds) == 2 and ds.default_metric == "vqa_accuracy"
    s = ds[0]
    assert s.id == "420" and s.question == "What color is it?" and s.answers == ["red"] * 9 + ["maroon"]
    assert s.meta == {"image_id": 42, "type": "other", "question_type": "what color", "multiple_choice_answer": "red"}
    assert s.images[0].size == (12, 10)
    assert ds.sample_id(1) == "421" and ds[1].meta["type"] == "yes/no"
    # Test splits come without annotations.
    bare = build_dataset({"name": "okvqa", "questions": q, "images": str(tmp_path / "val2014"), "limit": 1})
    assert len(bare) == 1 and bare[0].answers is None


def test_gqa_balanced_questions(tmp_path):
    _image(tmp_path / "images/n1.jpg")
    p = _json(tmp_path / "val_balanced_questions.json", {
        "05451384": {"imageId": "n1", "question": "Is the sky blue?", "answer": "yes", "fullAnswer": "Yes, it is.",
                     "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}, "isBalanced": True}})  # fmt: skip
    ds = build_dataset({"name": "gqa", "path": p, "images": str(tmp_path / "images")})
    s = ds[0]
    assert (s.id, s.answers, s.meta["type"], s.meta["semantic"], s.meta["full_answer"]) == ("05451384", ["yes"], "verify", "attr", "Yes, it is.")
    assert ds.default_metric == "exact_match"


def test_textvqa(tmp_path):
    _image(tmp_path / "train_images/abc.jpg")
    p = _json(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "question": "what brand?", "image_id": "abc", "image_classes": ["Bottle"],
         "answers": ["nokia"] * 8 + ["toshiba"] * 2}]})  # fmt: skip
    s = build_dataset({"name": "textvqa", "path": p, "images": str(tmp_path / "train_images")})[0]
    assert s.id == "34602" and s.answers.count("nokia") == 8 and s.meta["image_classes"] == ["Bottle"]


def test_vizwiz(tmp_path):
    _image(tmp_path / "val/VizWiz_val_00000000.jpg")
    p = _json(tmp_path / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answerable": 0, "answer_type": "unanswerable",
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10}])  # fmt: skip
    ds = build_dataset({"name": "vizwiz", "path": p, "images": str(tmp_path / "val")})
    s = ds[0]
    assert s.id == "VizWiz_val_00000000" and s.answers == ["unanswerable"] * 10
    assert s.meta == {"type": "unanswerable", "answerable": 0} and ds.default_metric == "vqa_accuracy"


def test_docvqa_images_relative_to_the_json(tmp_path):
    _image(tmp_path / "documents/xnbl0037_1.png")
    p = _json(tmp_path / "val_v1.0_withQT.json", {"dataset_name": "docvqa", "data": [
        {"questionId": 337, "question": "what is the date?", "question_types": ["handwritten", "form"],
         "image": "documents/xnbl0037_1.png", "docId": 279, "ucsf_document_page_no": "1",
         "answers": ["1/8/93", "january 8, 1993"]}]})  # fmt: skip
    ds = build_dataset({"name": "docvqa", "path": p})
    s = ds[0]
    assert s.id == "337" and s.answers == ["1/8/93", "january 8, 1993"] and s.meta["type"] == "handwritten"
    assert ds.default_metric == "anls"


def test_pope_jsonl(tmp_path):
    _image(tmp_path / "coco/COCO_val2014_000000016631.jpg")
    path = tmp_path / "coco_pope_random.json"
    path.write_text(
        '{"question_id": 1, "image": "COCO_val2014_000000016631.jpg", "text": "Is there a person in the image?", "label": "yes"}\n'
        '{"question_id": 2, "image": "COCO_val2014_000000016631.jpg", "text": "Is there a dog in the image?", "label": "no"}\n'
    )
    ds = build_dataset({"name": "pope", "path": str(path), "images": str(tmp_path / "coco")})
    assert [ds.sample_id(i) for i in range(2)] == ["1", "2"] and ds.default_metric == "pope"
    s = ds[1]
    assert s.question == "Is there a dog in the image?" and s.answers == ["no"] and s.meta["type"] == "coco_pope_random"


def test_missing_files_are_named(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^data\.questions: file not found: .*nope\.json$"):
        build_dataset({"name": "vqav2", "questions": str(tmp_path / "nope.json"), "images": str(tmp_path)})
    p = _json(tmp_path / "t.json", {"data": [{"question_id": 1, "question": "q", "image_id": "gone"}]})
    with pytest.raises(FileNotFoundError, match=r"^data\.images: folder not found: .*missing$"):
        build_dataset({"name": "textvqa", "path": p, "images": str(tmp_path / "missing")})
    ds = build_dataset({"name": "textvqa", "path": p, "images": str(tmp_path / "imgs")})
    with pytest.raises(SampleError, match=r"sample '1': cannot read image .*gone\.jpg"):
        ds[0]  # images load lazily: a missing one fails only its own sample


def test_malformed_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"data\.path: .*bad\.json: not valid JSON"):
        build_dataset({"name": "gqa", "path": str(bad), "images": str(tmp_path)})
    p = _json(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "q"}]})
    with pytest.raises(ValueError, match=r"questions\[0\]: missing key 'question_id'"):
        build_dataset({"name": "vqav2", "questions": p, "images": str(tmp_path)})
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"question_id": 1, "image": "x.jpg", "text": "q", "label": "yes"}\n{oops\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not a JSON line"):
        build_dataset({"name": "pope", "path": str(lines), "images": str(tmp_path)})
