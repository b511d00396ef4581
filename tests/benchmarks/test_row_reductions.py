"""Smoke test of benchmarks/row_reductions.py: each pair computes the same quantity; no timing asserted."""

from __future__ import annotations

import pytest
import torch

from benchmarks.row_reductions import case, main, pairs


@pytest.mark.parametrize("batch", [1, 3])
def test_each_pair_agrees(batch: int) -> None:
    tensors = case(batch, heads=4, keys=30, image=20)
    for name, (before, now) in pairs(*tensors).items():
        a, b = before(), now()
        if name == "rank":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (pairs(*tensors)["a log a"][1]() <= 0).all()  # sum a log a of probabilities
    assert (tensors[2] > 0).any()  # some keys are boosted


def test_main_prints_a_row_per_quantity_and_batch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repeats", "2", "--heads", "2", "--keys", "12", "--image", "8", "--batch", "1", "--batch", "2"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows[1:]] == [(q, b) for b in ("1", "2") for q in ("mass", "a log a", "rank", "vrga step")]
