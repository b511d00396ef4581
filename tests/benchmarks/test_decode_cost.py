"""Smoke test of the decode-cost benchmark: the tiniest setting, structure and token agreement only.

No timing is asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decode_cost_tiny_run_writes_json_and_markdown(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "decode_cost.py"),
        "--model", "tiny-llava", "--recipe", "dualpd", "--threads", "1",
        "--max-new-tokens", "3", "--batch", "4", "--batch-tokens", "2", "--repeats", "1", "--batch-repeats", "1", "--bracket",
        "--reference", "cache", "--ref-tokens", "3", "--memory-lengths", "64,128", "--memory-tokens", "1",
        "--profile-recipe", "dualpd", "--long-tokens", "60", "--long-rounds", "1", "--json", str(out_json), "--markdown", str(out_md),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)  # generous: the machine may be shared
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out_json.read_text())

    assert set(result) >= {"command", "machine", "settings", "recipes", "reference", "memory_scaling", "profile", "length"}
    assert result["machine"]["torch_threads"] == 1
    assert {"cpu", "cores", "torch", "transformers"} <= set(result["machine"])
    rows = {r["recipe"]: r for r in result["recipes"]}
    assert list(rows) == ["vanilla", "vanilla_rows", "dualpd"]
    assert rows["vanilla_rows"]["tokens_b1"] == rows["vanilla"]["tokens_b1"]  # the control changes no token
    assert rows["dualpd"]["vs_control"]["1"]["per_token_ms"] > 0
    assert rows["dualpd"]["vs_vanilla"]["1"]["per_token_paired"] > 0  # one round: one paired ratio
    # --bracket: vanilla ran after each recipe's batch-1 run, one bracket per run, vanilla's own times unmixed
    assert len(rows["dualpd"]["runs"]["1"]["bracket_runs_ms"]) == len(rows["dualpd"]["runs"]["1"]["per_token_runs_ms"]) == 1
    assert rows["dualpd"]["vs_vanilla"]["1"]["per_token_bracketed"] > 0
    assert len(rows["vanilla"]["runs"]["1"]["per_token_runs_ms"]) == 1 and "bracket_runs_ms" not in rows["vanilla"]["runs"]["1"]
    assert "bracket_runs_ms" not in rows["dualpd"]["runs"]["4"]
    for row in rows.values():
        assert set(row["runs"]) == {"1", "4"}
        for run in row["runs"].values():
            assert run["per_token_ms"] > 0 and run["prefill_ms"] > 0 and run["tokens_per_s"] > 0
            assert run["peak_mb"] >= 0
        assert set(row["vs_vanilla"]["1"]) >= {"per_token_ms", "peak_mb"}
    assert rows["vanilla"]["vs_vanilla"]["1"]["per_token_ms"] == 1.0

    refs = {r["recipe"]: r for r in result["reference"]}
    assert set(refs) == {"vanilla", "dualpd"}
    for ref in refs.values():
        assert ref["mode"] == "cache"
        assert ref["agree"], (ref["tokens"], rows[ref["recipe"]]["tokens_b1"])
        assert ref["compared"] >= 1
        assert ref["vs_ours"]["per_token_ms"] > 0

    assert [m["target_tokens"] for m in result["memory_scaling"]] == [64, 128]
    assert all(m["agree"] for m in result["memory_scaling"])
    assert result["profile"]["rows"] and result["profile"]["steps"] >= 1

    length = {r["recipe"]: r for r in result["length"]}
    assert list(length) == ["vanilla", "vanilla_rows", "dualpd"]
    assert all(r["early_token"] == 20 and r["late_token"] == 40 and r["late_over_early"] > 0 for r in length.values())
    assert all(r["line_late_over_early"] > 0 and r["early_line_ms"] > 0 for r in length.values())

    text = out_md.read_text()
    assert "<!-- results:begin -->" in text and "| dualpd |" in text and "torch threads set to 1" in text
    assert "### Cost against answer length (batch 1)" in text


def test_kv_cache_benchmark_prints_both_caches() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kv_cache.py"), "--tokens", "30", "--rounds", "1", "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| vanilla |") or line.startswith("| dualpd |")]
    assert {tuple(r.split(" | ")[:2]) for r in rows} == {
        ("| vanilla", "growing"), ("| vanilla", "dynamic"), ("| dualpd", "growing"), ("| dualpd", "dynamic")
    }


def test_end_to_end_benchmark_agrees_with_the_plain_loop(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--limit", "8", "--rounds", "2", "--threads", "1", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["questions"] == 8 and len(result["rounds"]) == 2
    assert all(r["agree"] == 1.0 and r["ours_s"] > 0 and r["plain_s"] > 0 for r in result["rounds"])
