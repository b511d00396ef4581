"""Smoke test of benchmarks/step_parts.py: the table's rows and probe counts, no timing asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_step_parts_prints_one_row_per_recipe_with_its_probe_count() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_parts.py"), "--batch", "2", "--tokens", "3", "--rounds", "2", "--recipe", "dualpd"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"recipe", "vanilla", "vanilla_rows", "dualpd"}
    assert rows["vanilla"][1] == "0" and rows["vanilla"][2] == "—"  # sdpa everywhere: nothing probed
    assert rows["dualpd"][1] == rows["vanilla_rows"][1] != "0"  # DualPD probes the blocks the control does
    assert all(float(v) > 0 for v in (rows["dualpd"][0], rows["dualpd"][2], rows["dualpd"][3]))
