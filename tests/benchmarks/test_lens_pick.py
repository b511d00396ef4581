"""Smoke test of benchmarks/lens_pick.py: it runs both picks and prints their ratio (no timing asserted)."""

from __future__ import annotations

from benchmarks.lens_pick import main


def test_lens_pick_prints_both_picks(capsys):
    assert main(["--batch", "2", "--vocab", "64", "--candidates", "3", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "pick from the product" in out and "stack / product" in out
