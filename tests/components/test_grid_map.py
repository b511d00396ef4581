"""first_grid_maps: image-token values laid out on the sample's first image grid."""

from __future__ import annotations

import torch

from mllm_refine.components import first_grid_maps


def test_values_on_the_first_grid_without_row_ends():
    values = torch.arange(8.0).reshape(1, 8)  # (B=1, I=8): a 2 x 3 grid, then two more tokens
    assert first_grid_maps(values, [[(2, 3), (1, 2)]], (0,)) == [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]


def test_row_end_tokens_are_dropped_and_samples_kept_apart():
    # Sample 0: a 2 x 2 grid with one newline token after each row (tokens 2 and 5 are newlines);
    # sample 1: no image.
    values = torch.tensor([[1.0, 2.0, 9.0, 3.0, 4.0, 9.0], [0.0] * 6])  # (B=2, I=6)
    assert first_grid_maps(values, [[(2, 2)], []], (1,)) == [[[1.0, 2.0], [3.0, 4.0]], None]


def test_too_few_values_give_no_map():
    assert first_grid_maps(torch.ones(1, 3), [[(2, 2)]], (0,)) == [None]
