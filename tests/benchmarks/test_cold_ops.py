"""Smoke test of benchmarks/cold_ops.py: one row per recipe with its op count, no timing asserted."""

from __future__ import annotations

import pytest

from benchmarks.cold_ops import main


def test_main_prints_each_recipe_with_its_op_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--recipe", "dualpd_layer", "--recipe", "deco", "--repeats", "3"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"recipe", "deco", "dualpd_layer", "one add (floor)"}
    assert rows["one add (floor)"][0] == "1"
    assert int(rows["dualpd_layer"][0]) > 1 and int(rows["deco"][0]) > 1  # a selector and a combiner: many ops
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for name, r in rows.items() if name != "recipe")
