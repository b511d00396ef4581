"""Smoke test of benchmarks/row_layout.py: one row per dtype and batch, equal outputs, no timing asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_row_layout_prints_equal_rows_for_each_dtype_and_batch() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "row_layout.py"), "--threads", "1", "--repeats", "2", "--heads", "4",
           "--keys", "20", "--dim", "8", "--room", "6", "--batch", "1", "--batch", "3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0][0] == "dtype" and [(r[0], r[1]) for r in rows[1:]] == [("bfloat16", "1"), ("bfloat16", "3"), ("float32", "1"), ("float32", "3")]
    assert all(r[5] == "True" and float(r[2]) > 0 and float(r[3]) > 0 for r in rows[1:])
