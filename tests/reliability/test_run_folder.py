"""A run folder holds one configuration, written by one run at a time: a rerun of another
configuration, edited data, duplicate ids and a second writer are refused before anything is
decoded; ``--restart`` and ``--retry-failed`` are the ways on; SIGTERM stops after the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm_refine.cli import main
from mllm_refine.lightning.identity import differences, fingerprint
from mllm_refine.lightning.lock import FolderLock

RECIPE = "model: {{path: tiny-llava}}\ndata: {{name: manifest, path: {path}}}\ndecode: {{max_new_tokens: {n}, batch_size: 1}}\n"


SHAPES = "model: {path: tiny-llava}\ndata: {name: shapes, n: 80}\ndecode: {max_new_tokens: 4, batch_size: 2}\n"
DDP = "trainer: {accelerator: cpu, devices: 2, strategy: ddp}\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(recipe, out) -> list[str]:
    return [sys.executable, "-m", "mllm_refine.cli", "run", str(recipe), "--threads", "1", "-o", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    """``predictions.jsonl`` of one uninterrupted 1-process run of ``SHAPES``."""
    root = tmp_path_factory.mktemp("whole")
    (root / "r.yaml").write_text(SHAPES)
    assert subprocess.run(_cli(root / "r.yaml", root / "run"), capture_output=True, env=ENV).returncode == 0
    return (root / "run" / "predictions.jsonl").read_bytes()


def _err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_fingerprint_ignores_what_cannot_change_an_answer():
    base = {"model": {"path": "m"}, "data": {"name": "manifest", "path": "x", "limit": 5}, "decode": {"max_new_tokens": 8, "batch_size": 8},
            "description": "a", "trainer": {"devices": 2}}  # fmt: skip
    same = json.loads(json.dumps(base))
    same["data"]["limit"], same["decode"]["batch_size"], same["description"], same["trainer"] = 50, 1, "b", {"devices": 8}
    assert fingerprint(base, "r") == fingerprint(same, "r")
    other = json.loads(json.dumps(base))
    other["decode"]["max_new_tokens"] = 1
    assert differences(fingerprint(base, "r"), fingerprint(other, "r")) == ["decode.max_new_tokens: 8 -> 1"]
    assert differences(fingerprint(base, "r"), fingerprint(base, "s")) == ['name: "r" -> "s"']


def test_a_rerun_of_another_configuration_is_refused_then_restarted(tmp_path, good_manifest, helpers, capsys):
    out = tmp_path / "run"
    recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=good_manifest, n=3))
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    before = (out / "predictions.jsonl").read_bytes()
    assert main(["run", str(recipe), "-o", str(out), "decode.max_new_tokens=1"]) == 2
    assert _err(capsys) == (f"mllm-refine: error: {out} holds a run of another configuration: decode.max_new_tokens: 3 -> 1; "
                            "rerun with a new --output, or --restart to keep the old folder aside")  # fmt: skip
    assert (out / "predictions.jsonl").read_bytes() == before  # nothing touched
    assert main(["run", str(recipe), "-o", str(out), "data.limit=2", "decode.batch_size=4"]) == 0  # cosmetic keys resume
    assert "0 decoded, 2 resumed" in capsys.readouterr().out
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    assert (out / "predictions.jsonl").read_bytes() == before
    assert main(["run", str(recipe), "-o", str(out), "decode.max_new_tokens=1", "--restart"]) == 0
    assert (tmp_path / "run.old-1" / "predictions.jsonl").read_bytes() == before
    assert all(len(r["tokens"]) <= 1 for r in helpers["records"](out / "predictions.jsonl").values())


def test_an_edited_question_is_not_resumed(tmp_path, helpers, capsys):
    helpers["image"](tmp_path / "a.png")
    rows = [{"id": f"g{i}", "image": "a.png", "question": q} for i, q in enumerate(["what color is it?", "is it red?"])]
    manifest = helpers["manifest"](tmp_path / "m.jsonl", rows)
    recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=manifest, n=2))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    rows[1]["question"] = "is it blue?"
    helpers["manifest"](manifest, rows)
    assert main(["run", str(recipe), "-o", str(out)]) == 2
    assert "sample 'g1' changed in the data since it was decoded" in _err(capsys)
    rows.append({"id": "g2", "image": "a.png", "question": "what shape is it?"})
    rows[1]["question"] = "is it red?"  # as it was: the run resumes, and the new line extends it
    helpers["manifest"](manifest, rows)
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    assert list(helpers["records"](out / "predictions.jsonl")) == ["g0", "g1", "g2"]


def test_duplicate_ids_are_refused_before_decoding(tmp_path, helpers, capsys):
    helpers["image"](tmp_path / "a.png")
    manifest = helpers["manifest"](tmp_path / "m.jsonl", [
        {"id": 1, "image": "a.png", "question": "what?"}, {"id": "x", "image": "a.png", "question": "what?"},
        {"id": "1", "image": "a.png", "question": "which?"}])  # fmt: skip
    recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=manifest, n=2))
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 2
    assert _err(capsys).endswith(f"data: sample id '1' is used twice: {manifest}:1 and {manifest}:3")
    assert not (tmp_path / "run" / "shards").exists()


def test_retry_failed_decodes_error_records_again(tmp_path, helpers):
    helpers["image"](tmp_path / "a.png")
    manifest = helpers["manifest"](tmp_path / "m.jsonl", [
        {"id": "ok", "image": "a.png", "question": "what?"}, {"id": "late", "image": "b.png", "question": "what?"}])  # fmt: skip
    recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=manifest, n=2))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "-o", str(out)]) == 3
    assert "file not found" in helpers["records"](out / "predictions.jsonl")["late"]["error"]
    helpers["image"](tmp_path / "b.png")  # the image is restored
    assert main(["run", str(recipe), "-o", str(out)]) == 3  # a plain rerun keeps the error record
    assert main(["run", str(recipe), "-o", str(out), "--retry-failed"]) == 0
    records = helpers["records"](out / "predictions.jsonl")
    assert records["late"]["error"] is None and records["ok"]["error"] is None


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, good_manifest, helpers, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from mllm_refine.lightning.lock import FolderLock; lock = FolderLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=good_manifest, n=2))
        assert main(["run", str(recipe), "-o", str(out)]) == 2
        assert _err(capsys) == (f"mllm-refine: error: {out}: another run (pid {holder.pid}) is writing into this folder; "
                                "wait for it to end, or give this run another --output")  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    FolderLock(out).acquire().release()  # the OS released the dead holder's lock


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_stops_after_the_batch_and_a_rerun_completes(signum, tmp_path, helpers, uninterrupted):
    recipe = helpers["recipe"](tmp_path / "r.yaml", SHAPES)
    run = subprocess.Popen(_cli(recipe, tmp_path / "run"), stderr=subprocess.PIPE, text=True, env=ENV)
    shard = tmp_path / "run" / "shards" / "rank-00000.jsonl"
    deadline = time.time() + 120
    while not (shard.exists() and shard.stat().st_size) and time.time() < deadline:
        time.sleep(0.1)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"mllm-refine: r: stopped by {signal.Signals(signum).name} after ") and line.endswith(" of 80 samples; rerun to resume"), line
    done = int(line.split(" after ")[1].split()[0])
    assert 0 < done < 80 and len(shard.read_text().splitlines()) == done
    assert subprocess.run(_cli(recipe, tmp_path / "run"), capture_output=True, env=ENV).returncode == 0
    assert (tmp_path / "run" / "predictions.jsonl").read_bytes() == uninterrupted


@pytest.mark.parametrize("rows", [[], [b"", b"  "]])
def test_an_empty_manifest_is_refused(rows, tmp_path, helpers, capsys):
    manifest = helpers["manifest"](tmp_path / "m.jsonl", rows)
    recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=manifest, n=2))
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 2
    assert _err(capsys) == f"mllm-refine: error: data.path: {manifest} holds no samples (an empty manifest)"


def test_a_question_the_tokenizer_refuses_fails_that_sample_only(tmp_path, good_manifest, helpers, monkeypatch):
    import mllm_refine.lightning.module as module

    real = module.RefineModule._too_long

    def picky(self, sample):
        if sample.id == "g1":
            raise ValueError("the tokenizer cannot read this text")
        return real(self, sample)

    monkeypatch.setattr(module.RefineModule, "_too_long", picky)
    recipe = helpers["recipe"](tmp_path / "r.yaml", RECIPE.format(path=good_manifest, n=2).replace("batch_size: 1", "batch_size: 3"))
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 3
    records = helpers["records"](tmp_path / "run" / "predictions.jsonl")
    assert records["g1"]["error"] == "sample 'g1': ValueError: the tokenizer cannot read this text"
    assert records["g0"]["error"] is None and records["g2"]["error"] is None


def test_sigterm_under_two_ddp_ranks_then_a_rerun_equals_one_process(tmp_path, helpers, uninterrupted):
    """A scheduler's preemption signals the job's process group: each rank stops after its batch,
    rank 0 reports once, and the rerun completes byte-identical to an uninterrupted 1-process run."""
    recipe = helpers["recipe"](tmp_path / "r.yaml", SHAPES + DDP)
    run = subprocess.Popen(_cli(recipe, tmp_path / "run"), stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    shards = tmp_path / "run" / "shards"
    deadline = time.time() + 240
    while len([p for p in shards.glob("rank-*.jsonl") if p.stat().st_size]) < 2 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=240)
    assert run.returncode == 143, err[-2000:]
    stopped = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(stopped) == 1 and stopped[0].endswith(" of 80 samples; rerun to resume"), err[-2000:]
    assert subprocess.run(_cli(recipe, tmp_path / "run"), capture_output=True, env=ENV).returncode == 0
    assert (tmp_path / "run" / "predictions.jsonl").read_bytes() == uninterrupted


@pytest.mark.parametrize("victim", ["rank 1", "launcher"])
def test_sigkill_of_either_ddp_rank_then_a_rerun_equals_one_process(victim, tmp_path, helpers, uninterrupted):
    """SIGKILL of rank 1 stops every rank with one line; SIGKILL of the launcher (rank 0) leaves
    rank 1 an orphan, which stops before its next write. An immediate rerun then ends with every
    id once, byte-identical to an uninterrupted 1-process run."""
    recipe = helpers["recipe"](tmp_path / "r.yaml", SHAPES + DDP)
    cmd = _cli(recipe, tmp_path / "run")
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    shard = tmp_path / "run" / "shards" / "rank-00001.jsonl"
    deadline = time.time() + 240
    while not (shard.exists() and shard.stat().st_size) and time.time() < deadline:
        time.sleep(0.1)
    (child,) = [int(p) for p in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()]
    os.kill(child if victim == "rank 1" else run.pid, signal.SIGKILL)
    _, err = run.communicate(timeout=240)
    if victim == "rank 1":
        # rank 0 learns it from a collective (one line, exit 1) or from Lightning's watch of its
        # ranks (one line, then SIGKILL for every process), whichever comes first
        last = err.strip().splitlines()[-1]
        assert (run.returncode, last[:40]) in ((1, "mllm-refine: error: a DDP rank stopped ("),
                                               (-signal.SIGKILL, f"mllm-refine: error: DDP rank 1 (pid {child})"[:40])), err[-2000:]  # fmt: skip
        assert "Traceback" not in err
    else:
        deadline = time.time() + 120
        while Path(f"/proc/{child}").exists() and time.time() < deadline:  # the orphan stops at its next batch
            time.sleep(0.2)
        assert not Path(f"/proc/{child}").exists()
    assert subprocess.run(cmd, capture_output=True, env=ENV).returncode == 0
    assert (tmp_path / "run" / "predictions.jsonl").read_bytes() == uninterrupted
