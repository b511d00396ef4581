"""The answer-length line of benchmarks/length.py, by hand."""

from __future__ import annotations

import pytest

from benchmarks.length import line_through


def test_line_through_recovers_a_straight_line():
    steps = [2.0 + 0.01 * (i + 1) for i in range(100)]  # step i makes token i + 1
    early, late = line_through(steps, (20, 80))
    assert early == pytest.approx(2.2) and late == pytest.approx(2.8)


def test_line_through_ignores_a_slow_spell_over_one_window():
    flat = [1.0] * 200
    spell = flat[:]
    spell[170:200] = [1.5] * 30  # the late window's steps all run 1.5x slower
    assert line_through(flat, (20, 180)) == pytest.approx((1.0, 1.0))
    early, late = line_through(spell, (20, 180))
    assert late / early < 1.02  # the windows' medians would read 1.5x
