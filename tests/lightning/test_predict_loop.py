"""The Lightning predict loop end to end: two ddp processes match one, a SIGKILLed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mllm_refine.cli import main
from mllm_refine.testing import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]
N = 8
ARGS = [str(ROOT / "recipes/dualpd.yaml"), *TINY_RUN, f"data.n={N}", "decode.max_new_tokens=4"]
IDS = [f"shapes-0-{i:05d}" for i in range(N)]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _cli(out: Path, *extra: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mllm_refine.cli", "run", *ARGS, "-o", str(out), "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=out.parent)


def test_two_ddp_processes_match_a_killed_then_resumed_single_process(tmp_path):
    ddp_out, single = tmp_path / "ddp", tmp_path / "single"
    ddp = _cli(ddp_out, "decode.batch_size=2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
               log=tmp_path / "ddp.log")  # fmt: skip
    victim = _cli(single, "decode.batch_size=1", log=tmp_path / "victim.log")
    shard = single / "shards" / "rank-00000.jsonl"
    deadline = time.monotonic() + 300
    while not (shard.exists() and len(_lines(shard)) >= 2):
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "no records written in time"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    before = _lines(shard)
    assert 2 <= len(before) < N, "the kill must land midway"
    assert not (single / "predictions.jsonl").exists()
    with shard.open("a") as f:  # a record cut short by the kill
        f.write('{"id": "shapes-0-0000')

    assert main(["run", *ARGS, "-o", str(single), "decode.batch_size=1"]) == 0
    after = _lines(shard)
    assert after[: len(before)] == before  # what was written stays; the torn tail is gone
    assert sorted(json.loads(line)["id"] for line in after) == IDS  # none lost, none twice
    merged = _lines(single / "predictions.jsonl")
    assert [json.loads(line)["id"] for line in merged] == IDS
    summary = json.loads((single / "summary.json").read_text())
    assert (summary["written"], summary["skipped"]) == (N - len(before), len(before))

    assert ddp.wait(timeout=300) == 0, (tmp_path / "ddp.log").read_text()[-3000:]
    parts = [[json.loads(line)["id"] for line in _lines(ddp_out / "shards" / f"rank-{r:05d}.jsonl")] for r in (0, 1)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])  # both ranks worked, disjoint
    assert _lines(ddp_out / "predictions.jsonl") == merged  # same records, byte for byte
    ddp_summary = json.loads((ddp_out / "summary.json").read_text())
    assert ddp_summary["provenance"]["device"]["world_size"] == 2
    assert "dualpd: exact_match =" in (tmp_path / "ddp.log").read_text()
