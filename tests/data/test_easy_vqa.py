"""easy-VQA from its PyPI package: the published split sizes, labels recovered from the questions,
and the POPE-style probe built from them."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from mllm_refine.data import easy_vqa as ev


def test_splits_have_the_published_sizes_and_types():
    assert len(ev.questions("train")) == 38_575
    assert len(ev.questions("test")) == 9_673
    types = Counter(ev.answer_type(a) for _, a, _ in ev.questions("test"))
    assert set(types) == set(ev.QUESTION_TYPES) and types["yes_no"] > types["colour"] > 0


def test_recovered_labels_agree_with_every_open_question():
    labels = ev.image_labels("test")
    checked = 0
    for q, a, i in ev.questions("test"):
        kind = ev.answer_type(a)
        if kind != "yes_no":
            assert labels[i][kind] == a, (q, a, i)
            checked += 1
    assert checked > 2000


def test_recovered_labels_agree_with_every_yes_no_question():
    labels = ev.image_labels("test")
    for q, a, i in ev.questions("test"):
        if ev.answer_type(a) != "yes_no":
            continue
        words = set(re.findall(r"[a-z]+", q))
        negated = bool(words & {"not", "no"})
        for key, names in (("colour", ev.COLOURS), ("shape", ev.SHAPES)):
            for name in words & set(names):
                if key in labels[i]:
                    present = labels[i][key] == name
                    assert present == ((a == "yes") != negated), (q, a, i, labels[i])


def test_easy_vqa_samples_carry_image_answer_and_type():
    data = ev.EasyVQA("test", limit=5, question_types=["shape"])
    s = data[0]
    assert len(data) == 5 and s.images[0].size == (64, 64) and s.images[0].mode == "RGB"
    assert s.meta["type"] == "shape" and s.answers[0] in ev.SHAPES
    assert s.id.startswith("easyvqa-test-")
    with pytest.raises(ValueError, match="question types"):
        ev.EasyVQA("test", question_types=["count"])


@pytest.mark.parametrize("subset", ev.POPE_SUBSETS)
def test_pope_split_is_balanced_and_its_negatives_are_absent(subset):
    pope = ev.EasyVQAPope("test", subset=subset)
    labels = ev.image_labels("test")
    answers = Counter(r["answer"] for r in pope.rows)
    assert answers["yes"] == answers["no"] > 1000
    for r in pope.rows:
        present = labels[r["image_id"]][r["kind"]] == r["object"]
        assert present == (r["answer"] == "yes")


def test_pope_popular_negative_is_the_most_frequent_absent_shape():
    labels = {i: d for i, d in ev.image_labels("test").items() if "shape" in d and "colour" in d}
    freq = Counter(d["shape"] for d in labels.values())
    pope = ev.EasyVQAPope("test", subset="popular")
    for r in pope.rows[:200]:
        if r["kind"] == "shape" and r["answer"] == "no":
            present = labels[r["image_id"]]["shape"]
            absent = [s for s in ev.SHAPES if s != present]
            assert freq[r["object"]] == max(freq[s] for s in absent)
