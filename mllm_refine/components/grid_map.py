"""Image-token values laid out as the image's grid, for parts that report a map (scored by the
localisation metrics against a sample's target box)."""

from __future__ import annotations

from mllm_refine.lazy import torch


def first_grid_maps(
    values: torch.Tensor, grids: list[list[tuple[int, int]]], row_end_tokens: tuple[int, ...]
) -> list[list[list[float]] | None]:
    """Per sample ``b``: ``values[b]`` (I,), one value per image token in prompt order, placed on
    the sample's first grid as ``(rows, cols)`` nested lists (row-end tokens dropped): the base
    image of a tiled one, the merged-token grid of a Qwen image. ``None`` for a sample without
    an image grid or with fewer values than its grid holds. Grids are laid out as in
    ``ModelAdapter.image_grid``."""
    out: list[list[list[float]] | None] = []
    for b, sample in enumerate(grids):
        if not sample:
            out.append(None)
            continue
        rows, cols = sample[0]
        stride = cols + row_end_tokens[0]  # tokens per grid row
        if values.shape[1] < rows * stride:
            out.append(None)
            continue
        cells = values[b, : rows * stride].reshape(rows, stride)[:, :cols]  # (rows, cols)
        out.append(cells.detach().double().cpu().tolist())
    return out


__all__ = ["first_grid_maps"]
