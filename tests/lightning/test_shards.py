"""Shards: torn tails, the exactly-once merge, folders written before shards existed."""

from __future__ import annotations

import json

import pytest

from mllm_refine.lightning.shards import MergeError, adopt_predictions, merge, read_shard, repair_tail, written_ids


def _write(path, *ids, tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "prediction": f"p{i}"}) + "\n" for i in ids) + tail)


def test_torn_tail_is_ignored_then_cut(tmp_path):
    shard = tmp_path / "shards" / "rank-00000.jsonl"
    _write(shard, "a", "b", tail='{"id": "c", "predi')
    assert [r["id"] for r in read_shard(shard)] == ["a", "b"]
    assert written_ids(tmp_path) == {"a", "b"}
    assert repair_tail(shard) == len('{"id": "c", "predi')
    assert shard.read_text().endswith("}\n") and repair_tail(shard) == 0


def test_merge_orders_by_dataset_and_checks_each_id_once(tmp_path):
    _write(tmp_path / "shards" / "rank-00000.jsonl", "c", "a")
    _write(tmp_path / "shards" / "rank-00001.jsonl", "b", "old")
    records, left_out = merge(tmp_path, ["a", "b", "c"])
    assert [r["id"] for r in records] == ["a", "b", "c"] and left_out == 1
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["a", "b", "c"]
    with pytest.raises(MergeError, match=r"1 sample id\(s\) have no record, e\.g\. 'd'"):
        merge(tmp_path, ["a", "b", "c", "d"])
    _write(tmp_path / "shards" / "rank-00002.jsonl", "b")  # the same record twice (a batch written again)
    records, _ = merge(tmp_path, ["a", "b", "c"])
    assert [r["id"] for r in records] == ["a", "b", "c"]
    (tmp_path / "shards" / "rank-00002.jsonl").write_text(json.dumps({"id": "b", "prediction": "other"}) + "\n")
    with pytest.raises(MergeError, match=r"written more than once with different records, e\.g\. 'b' in "
                       r"rank-00001\.jsonl x1, rank-00002\.jsonl x1 .*--restart"):  # fmt: skip
        merge(tmp_path, ["a", "b", "c"])


def test_a_corrupt_line_inside_a_shard_is_named(tmp_path):
    shard = tmp_path / "shards" / "rank-00000.jsonl"
    _write(shard, "a", tail="not json\n")
    with pytest.raises(MergeError, match=r"rank-00000\.jsonl:2: not a JSON line"):
        written_ids(tmp_path)


def test_predictions_without_shards_are_adopted(tmp_path):
    _write(tmp_path / "predictions.jsonl", "a", "b")
    adopt_predictions(tmp_path)
    assert written_ids(tmp_path) == {"a", "b"}
    adopt_predictions(tmp_path)  # shards exist now: nothing happens
    assert len(list((tmp_path / "shards").iterdir())) == 1


def test_a_failed_write_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno
    import os

    from mllm_refine.lightning.shards import write_file

    target = tmp_path / "scores.json"
    target.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=rf"{target}: cannot write \(No space left on device\)"):
        write_file(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]
