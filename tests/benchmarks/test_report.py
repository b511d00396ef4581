"""Ratios of the decode-cost report, by hand."""

from __future__ import annotations

from benchmarks.report import paired, ratio


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # Round 2 ran on a machine twice as slow for both sides: its ratio is the same as round 1's.
    assert paired([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert ratio(15.0, 6.0) == 2.5  # ratio of medians: drift weighs in
    assert paired([1.0, 2.0], [1.0]) is None  # rounds must pair one to one
    assert paired([], []) is None
