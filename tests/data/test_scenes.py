"""easy-VQA scenes: deterministic generation, unambiguous questions, boxes and sizes in meta."""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter

import numpy as np
import pytest

from mllm_refine.data import scenes as sc
from mllm_refine.data.easy_vqa import COLOURS, SHAPES
from mllm_refine.data.scenes_pope import EasyVQAScenesPope
from mllm_refine.lightning.data import build_dataset

# sha256 over the first six test samples' PNG bytes and question texts (default parameters); PNG
# bytes also depend on Pillow's zlib, so a Pillow upgrade that changes them must recheck pixels.
PINNED = "b5f5de7df01e894ea07a5a17f1d44b9a345259c909d998d0b7ef85c999004e50"


def _digest(data: sc.EasyVQAScenes, count: int) -> str:
    h = hashlib.sha256()
    for i in range(count):
        s = data[i]
        buf = io.BytesIO()
        s.images[0].save(buf, format="PNG")
        h.update(buf.getvalue())
        h.update(s.question.encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def test_scenes() -> sc.EasyVQAScenes:
    return sc.EasyVQAScenes("test")  # the whole default test split: 500 scenes, under a second


def test_first_samples_are_pinned():
    assert _digest(sc.EasyVQAScenes("test", n=3), 6) == PINNED


def test_same_seed_same_bytes_other_seed_other_scenes():
    a, b = sc.EasyVQAScenes("test", n=4, seed=3), sc.EasyVQAScenes("test", n=4, seed=3)
    assert _digest(a, len(a)) == _digest(b, len(b))
    assert [r[1] for r in a.rows] == [r[1] for r in b.rows]
    assert _digest(sc.EasyVQAScenes("test", n=4, seed=4), 4) != _digest(a, 4)


def _referents(objects: list[dict], question: str, margin: int) -> tuple[str, list[int]]:
    """(what is asked, the objects the question can refer to), read from the text alone."""
    q = question.rstrip("?")
    if m := re.fullmatch(r"what (?:color is|is the color of) the shape on the (left|right|top|bottom)", q) or re.fullmatch(
        r"what shape is on the (left|right|top|bottom)", q
    ):
        side = m.group(1)
        axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[side]
        lo = [o["box"][axis] for o in objects]
        hi = [o["box"][axis + 2] for o in objects]
        if sign == 1:  # ends before every other starts
            clear = [j for j in range(len(objects)) if all(hi[j] + margin <= lo[k] for k in range(len(objects)) if k != j)]
        else:
            clear = [j for j in range(len(objects)) if all(hi[k] + margin <= lo[j] for k in range(len(objects)) if k != j)]
        return ("colour" if "color" in q else "shape"), (clear if len(objects) > 1 else [])
    if q in ("what color is the shape", "what is the color of the shape"):
        return "colour", list(range(len(objects))) if len(objects) == 1 else []
    if q in ("what shape is in the image", "what shape does the image contain", "what shape is present"):
        return "shape", list(range(len(objects))) if len(objects) == 1 else []
    if m := re.fullmatch(r"what (?:color is|is the color of) the (\w+)", q):
        assert m.group(1) in SHAPES
        return "colour", [j for j, o in enumerate(objects) if o["shape"] == m.group(1)]
    if m := re.fullmatch(r"what is the (\w+) shape", q):
        assert m.group(1) in COLOURS
        return "shape", [j for j, o in enumerate(objects) if o["colour"] == m.group(1)]
    words = q.split()
    assert words[0] in ("is", "does") and "not" not in words and "no" not in words, question
    name = next(w for w in words if w in COLOURS or w in SHAPES)
    key = "colour" if name in COLOURS else "shape"
    return "presence", [j for j, o in enumerate(objects) if o[key] == name]


def test_every_question_is_unambiguous_for_its_scene(test_scenes):
    margin = sc.position_margin(224)
    kinds = Counter()
    for i in range(len(test_scenes)):
        s = test_scenes[i]
        objects, (answer,) = s.meta["objects"], s.answers
        asked, refs = _referents(objects, s.question, margin)
        kinds[s.meta["kind"]] += 1
        if asked == "presence":
            assert answer == ("yes" if refs else "no"), s.question
            assert (s.meta["target_box"] is None) == (answer == "no")
            if refs:
                assert s.meta["target_box"] in [objects[j]["box"] for j in refs]
        else:
            assert len(refs) == 1, (s.question, objects)
            assert objects[refs[0]][asked] == answer
            assert s.meta["target_box"] == objects[refs[0]]["box"]
    assert set(kinds) == {"single", "colour_of_shape", "shape_of_colour", "position", "presence"}


def test_boxes_are_disjoint_inside_the_canvas_and_hold_their_shape(test_scenes):
    for scene in test_scenes.scenes[:40]:
        picture = np.asarray(sc.render(scene), dtype=np.int64)  # (H, W, 3)
        boxes = [o.box for o in scene.objects]
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= scene.canvas and 0 <= y0 < y1 <= scene.canvas
            for k in range(j):
                a = boxes[k]
                assert x1 + sc.GAP <= a[0] or a[2] + sc.GAP <= x0 or y1 + sc.GAP <= a[1] or a[3] + sc.GAP <= y0
            fill = np.array(sc.cutout("test", scene.objects[j].image_id).fill)
            bg = np.array(scene.background)
            near = np.abs(picture[y0:y1, x0:x1] - fill).sum(-1) < np.abs(picture[y0:y1, x0:x1] - bg).sum(-1)
            assert near.mean() > 0.25  # the shape's own colour fills much of its box
        outside = np.ones(picture.shape[:2], bool)
        for x0, y0, x1, y1 in boxes:
            outside[y0:y1, x0:x1] = False
        assert (picture[outside] == np.array(scene.background)).all()  # nothing drawn outside the boxes


def test_meta_carries_objects_target_and_size_bucket(test_scenes):
    s = test_scenes[0]
    assert s.images[0].size == (224, 224) and s.id == "easyvqa-scenes-test-000000"
    assert s.meta["image_size"] == [224, 224] and s.meta["type"] in ("yes_no", "colour", "shape")
    assert all(set(o) == {"box", "colour", "shape", "image_id"} for o in s.meta["objects"])
    buckets = Counter()
    for i in range(len(test_scenes)):
        m = test_scenes[i].meta
        if m["target_box"] is None:
            assert m["rel_size"] is None and m["size_bucket"] is None
            continue
        x0, y0, x1, y1 = m["target_box"]
        assert m["rel_size"] == pytest.approx((x1 - x0) * (y1 - y0) / 224**2, abs=1e-6)
        assert m["size_bucket"] == sc.size_bucket(m["rel_size"])
        buckets[m["size_bucket"]] += 1
    assert set(buckets) == {"small", "medium", "large"}
    assert sc.size_bucket(1 / 64 - 1e-9) == "small" and sc.size_bucket(1 / 64) == "medium"
    assert sc.size_bucket(1 / 16) == "large"


def test_train_scenes_use_train_images_and_carry_the_prior():
    train = sc.EasyVQAScenes("train", n=300)
    ids = {o.image_id for s in train.scenes for o in s.objects}
    assert ids <= {i for v in sc.pools("train").values() for i in v}
    objs = [o for s in train.scenes for o in s.objects]
    favourite = sum(o.shape == sc.FAVOURITE[o.colour] for o in objs) / len(objs)
    assert favourite > 0.7  # 0.7 + 0.3 / 3 expected
    test = sc.EasyVQAScenes("test", n=300)
    objs = [o for s in test.scenes for o in s.objects]
    assert sum(o.shape == sc.FAVOURITE[o.colour] for o in objs) / len(objs) < 0.45  # uniform: 1/3


def test_parameters_reach_the_dataset_and_bad_ones_name_themselves():
    data = build_dataset({"name": "easy_vqa_scenes", "split": "test", "n": 2, "canvas": 128, "limit": 3})
    assert len(data) == 3 and data[0].images[0].size == (128, 128)
    for bad, match in (({"canvas": 16}, "canvas"), ({"n": 0}, "n: expected"), ({"prior": 2.0}, "prior"),
                       ({"split": "val"}, "split")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            sc.EasyVQAScenes(**bad)


@pytest.mark.parametrize("subset", ["random", "popular", "adversarial"])
def test_pope_subsets_are_balanced_and_negatives_absent(subset):
    data = EasyVQAScenesPope("test", subset=subset, n=150)
    answers = Counter(r["answer"] for _, r in data.rows)
    assert abs(answers["yes"] - answers["no"]) / len(data.rows) <= 0.02
    for k, row in data.rows:
        held = {o.colour for o in data.scenes[k].objects} | {o.shape for o in data.scenes[k].objects}
        assert (row["object"] in held) == (row["answer"] == "yes")
    s = data[1]
    assert s.meta["pope_subset"] == subset and s.meta["type"] == "yes_no"


def test_pope_adversarial_negatives_follow_the_train_prior():
    """Absent partners and favourites are asked about far more often than at random."""
    counts = {}
    for subset in ("random", "adversarial"):
        data = EasyVQAScenesPope("test", subset=subset, n=150)
        partner = 0
        for k, row in data.rows:
            if row["answer"] == "no" and row["kind"] == "colour":
                colours = {o.colour for o in data.scenes[k].objects}
                partner += any(sc.PARTNER[c] == row["object"] for c in colours)
        counts[subset] = partner
    assert counts["adversarial"] > 1.5 * counts["random"]
    popular = EasyVQAScenesPope("test", subset="popular", n=150)
    top = Counter(r["object"] for _, r in popular.rows if r["answer"] == "no" and r["kind"] == "colour")
    assert top.most_common(1)[0][0] == "red"  # the most popular colour of the train prior
