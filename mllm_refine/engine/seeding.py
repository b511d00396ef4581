"""Per-sample random streams: a sample's draws depend on the seed and its id, never on its batch."""

from __future__ import annotations

import hashlib

from mllm_refine.lazy import torch


def sample_seed(seed: int, sample_id: str, stream: str = "") -> int:
    """A 63-bit seed from the recipe seed, the sample id and the name of what draws from it
    (``stream``; "" is the sampler's), so two uses of one sample never share a stream."""
    key = "\0".join([str(seed), sample_id, *([stream] if stream else [])])
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_generators(seed: int, ids: list[str], device: torch.device | str = "cpu", stream: str = "") -> list[torch.Generator]:
    """One seeded generator per sample, on ``device``."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, i, stream)) for i in ids]


__all__ = ["sample_generators", "sample_seed"]
