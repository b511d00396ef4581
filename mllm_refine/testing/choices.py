"""Comparing what parts chose across runs (e.g. a batch against single samples)."""

from __future__ import annotations

from typing import Any

import torch


def same_choices(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a == b``, except that reported maps (keys ending in ``map``: float grids that batching
    only rounds) need only agree to float32 rounding."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if key.rsplit(".", 1)[-1] == "map" and value is not None and b[key] is not None:
            x, y = torch.tensor(value, dtype=torch.float64), torch.tensor(b[key], dtype=torch.float64)
            if x.shape != y.shape or not torch.allclose(x, y, rtol=1e-4, atol=1e-6):
                return False
        elif value != b[key]:
            return False
    return True


__all__ = ["same_choices"]
