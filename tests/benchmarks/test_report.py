"""Ratios of the decode-cost report, by hand."""

from __future__ import annotations

from benchmarks.report import _token, _token_ci, _verdict, add_ratios, median_ci, paired, paired_ci, ratio


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # Round 2 ran on a machine twice as slow for both sides: its ratio is the same as round 1's.
    assert paired([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert ratio(15.0, 6.0) == 2.5  # ratio of medians: drift weighs in
    assert paired([1.0, 2.0], [1.0]) is None  # rounds must pair one to one
    assert paired([], []) is None


def test_median_interval_takes_the_binomial_order_statistics():
    # n = 9: P(S < 2) = 10/512 <= 0.025 < P(S < 3) = 46/512, so x_(2) and x_(8).
    assert median_ci([9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]) == (2.0, 8.0)
    # n = 15: P(S < 4) = 576/32768 <= 0.025 < P(S < 5): x_(4) and x_(12).
    assert median_ci([float(x) for x in range(1, 16)]) == (4.0, 12.0)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # P(S = 0) = 1/32 > 0.025: no 95 % interval
    assert paired_ci([2.0] * 6, [1.0] * 6) == (2.0, 2.0)
    assert paired_ci([2.0], [1.0, 1.0]) is None


def test_ratios_prefer_the_bracketing_vanilla_runs():
    runs = {"per_token_ms": 2.0, "prefill_ms": 1.0, "end_to_end_ms": 1.0, "peak_mb": 1.0, "peak_delta_mb": 1.0}
    vanilla = {"recipe": "vanilla", "runs": {"1": {**runs, "per_token_runs_ms": [1.0] * 6}}}
    recipe = {"recipe": "dualpd", "runs": {"1": {**runs, "per_token_runs_ms": [2.0] * 6, "bracket_runs_ms": [1.6] * 6}}}
    control = {"recipe": "vanilla_rows", "runs": {"1": {**runs, "per_token_runs_ms": [1.0] * 6}}}
    result = {"recipes": [vanilla, control, recipe], "reference": []}
    add_ratios(result)
    v = recipe["vs_vanilla"]["1"]
    assert v["per_token_paired"] == 2.0 and v["per_token_bracketed"] == 1.25
    assert _token(v) == 1.25 and _token_ci(v) == (1.25, 1.25)
    assert "per_token_bracketed" not in recipe["vs_control"]["1"]  # the brackets are vanilla runs only


def test_verdict_says_when_an_interval_crosses_the_target():
    assert _verdict([1.08, 1.0], [(1.02, 1.09), (0.9, 1.04)], ["b1", "b16"]) == "met"
    assert _verdict([1.08, 1.0], [(1.02, 1.14), (0.9, 1.04)], ["b1", "b16"]) == "met, b1 interval across the target"
    assert _verdict([1.12, 1.0], [(1.11, 1.14), None], ["b1", "b16"]) == "missed"
