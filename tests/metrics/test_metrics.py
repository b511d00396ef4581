"""Metrics against values worked out by hand, and their cross-rank reduction."""

from __future__ import annotations

import pytest
import torch

from mllm_refine.metrics import ANLS, POPE, ExactMatch, VQAAccuracy, normalize_answer
from mllm_refine.metrics.anls import levenshtein
from mllm_refine.metrics.pope import yes_no
from mllm_refine.metrics.vqa import vqa_accuracy


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("A dog", "dog"),  # articles go, case folds
        ("the an a", ""),
        ("an apple", "apple"),
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # only zero..ten (and none) are mapped
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # a decimal point stays
        ("1,000", "1000"),  # a digit-comma-digit answer deletes every listed mark
        ("red,blue", "red blue"),  # a mark touching no space becomes a space
        ("red, blue", "red blue"),  # a mark next to a space is deleted
        ("hot-dog", "hot dog"),
        ("(left)", "left"),
        ("what?!", "what"),
        ("9:00", "9:00"),  # ':' is not in the list
        ("dont", "don't"),  # contractions get their apostrophe back
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("shouldn'tve", "shouldn't've"),
        ("couldntve", "couldntve"),  # not in the table: both apostrophes missing
        ("its", "its"),  # a word, not in the table
        ("Yes\tsir\n", "yes sir"),
    ],
)
def test_vqa_normaliser(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_vqa_accuracy_leave_one_out():
    # k matching answers out of ten: each of the k subsets that leave a match out sees k - 1,
    # the other 10 - k see k; accuracy = (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10.
    ten = lambda k: ["2"] * k + ["3"] * (10 - k)  # noqa: E731
    assert vqa_accuracy("2", ten(0)) == 0.0
    assert vqa_accuracy("two", ten(1)) == pytest.approx(0.3)  # 9 subsets x 1/3 / 10
    assert vqa_accuracy("Two.", ten(2)) == pytest.approx(0.6)  # (2 x 1/3 + 8 x 2/3) / 10
    assert vqa_accuracy("2", ten(3)) == pytest.approx(0.9)  # (3 x 2/3 + 7 x 1) / 10
    assert vqa_accuracy("2", ten(4)) == 1.0
    assert vqa_accuracy("the dog", ["dog"]) == 1.0  # a single answer scores 0 or 1
    m = VQAAccuracy()
    m.update(["2", "two", "cat"], [ten(3), ten(1), ten(10)])
    assert float(m.compute()) == pytest.approx((0.9 + 0.3 + 0.0) / 3)


def test_anls_threshold_and_normalisation():
    assert levenshtein("kitten", "sitting") == 3
    assert ANLS().score("  The  Cat ", ["the cat"]) == 1.0  # normalised on both sides
    assert ANLS().score("abcd", ["abce"]) == pytest.approx(0.75)  # NL = 1/4
    assert ANLS().score("ab", ["ax"]) == 0.0  # NL = 1/2 is not below the threshold
    assert ANLS().score("abc", ["xyz", "abd"]) == pytest.approx(1 - 1 / 3)  # best reference
    m = ANLS()
    m.update(["abcd", "zzz"], [["abce"], ["abc"]])
    assert float(m.compute()) == pytest.approx(0.375)


def test_pope_counts():
    assert yes_no("No, there is not.") == "no"
    assert yes_no("Yes. There is no doubt.") == "yes"  # only the first sentence counts
    assert yes_no("There is not a dog") == "no"
    assert yes_no("Nothing") == "yes"  # whole words only
    preds = ["yes", "Yes, there is", "no", "no", "yes", "No."]
    labels = [["yes"], ["yes"], ["yes"], ["no"], ["no"], ["no"]]
    m = POPE()
    m.update(preds, labels)
    v = {k: float(x) for k, x in m.compute().items()}
    # tp=2 fn=1 fp=1 tn=2
    assert v["accuracy"] == pytest.approx(4 / 6)
    assert v["precision"] == pytest.approx(2 / 3)
    assert v["recall"] == pytest.approx(2 / 3)
    assert v["f1"] == pytest.approx(2 / 3)
    assert v["yes_ratio"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="yes or no"):
        m.update(["yes"], [["maybe"]])


def test_pope_without_positive_predictions_is_zero_not_nan():
    m = POPE()
    m.update(["no", "no"], [["yes"], ["no"]])
    v = m.compute()
    assert float(v["precision"]) == 0.0 and float(v["f1"]) == 0.0 and float(v["accuracy"]) == 0.5


@pytest.mark.parametrize("cls", [ExactMatch, VQAAccuracy, ANLS, POPE])
def test_states_reduce_like_one_pass(cls):
    # What ranks do: update on their own part, then the summed states give the full score.
    preds = ["yes", "no", "2", "the cat", "No.", "abc"]
    refs = [["yes"], ["yes"], ["two"], ["cat"], ["no"], ["abd"]]
    if cls is POPE:
        refs = [["yes"], ["yes"], ["no"], ["yes"], ["no"], ["no"]]
    whole, left, right = cls(), cls(), cls()
    whole.update(preds, refs)
    left.update(preds[:2], refs[:2])
    right.update(preds[2:], refs[2:])
    left.merge_state(right)
    a, b = whole.compute(), left.compute()
    a, b = (a, b) if isinstance(a, dict) else ({"v": a}, {"v": b})
    assert {k: float(x) for k, x in a.items()} == {k: float(x) for k, x in b.items()}


def test_exact_match():
    m = ExactMatch()
    m.update(["Red!", "blue", "a square"], [["red"], ["green", "Blue"], ["square"]])
    assert float(m.compute()) == pytest.approx(2 / 3)
    assert m.sample_stats(["x"], [["x"]]).tolist() == [[1.0, 1.0]]
    assert isinstance(m.compute(), torch.Tensor)


def test_registered_summaries_are_the_classes_first_doc_lines() -> None:
    import mllm_refine.metrics as metrics
    from mllm_refine.plugin_manager import get_registry

    for name, (cls, summary) in metrics.METRICS.items():
        doc_line = getattr(metrics, cls).__doc__.strip().splitlines()[0]
        assert summary == doc_line, name
        assert get_registry().get("metric", name).obj.__doc__ == summary
        assert type(get_registry().get("metric", name).obj()).__name__ == cls
