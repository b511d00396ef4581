"""Disk full while a shard is written: one line, exit code 1, the records already written stay
and a rerun resumes from them. (SIGKILL mid-run, per rank, and torn last lines are covered by
tests/lightning/test_predict_loop.py, tests/lightning/test_shards.py and tests/test_run.py.)"""

from __future__ import annotations

import errno
import os

from mllm_refine.cli import main


def test_disk_full_keeps_what_was_written_and_resumes(tmp_path, good_manifest, helpers, monkeypatch, capsys):
    recipe = helpers["recipe"](tmp_path / "r.yaml", f"model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {good_manifest}}}\n"
                               "decode: {max_new_tokens: 3, batch_size: 1}\n")  # fmt: skip
    out = tmp_path / "run"
    shard = out / "shards" / "rank-00000.jsonl"
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(shard.name):
            return real_fsync(fd)  # the run's other files (recipe.yaml)
        calls.append(fd)
        if len(calls) == 2:  # the second batch: its bytes reached the file, then the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["run", str(recipe), "-o", str(out)]) == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == (f"mllm-refine: error: {shard}: cannot write a batch of records (No space left on device); "
                         "the records already in it are kept, rerun to resume")  # fmt: skip
    kept = shard.read_text()
    assert kept.endswith("\n") and list(helpers["records"](shard)) == ["g0"]  # the failed batch was cut back
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    assert shard.read_text().startswith(kept)
    assert list(helpers["records"](out / "predictions.jsonl")) == ["g0", "g1", "g2"]
    assert "2 decoded, 1 resumed" in capsys.readouterr().out
