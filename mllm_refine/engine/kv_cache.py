"""A KV cache that grows in place, so a decode step costs the same at answer token 500 as at 5.

transformers' ``DynamicCache`` concatenates each step's keys and values to the whole cache:
every block copies its ``(B, H, K, Dh)`` keys and values once per step, so a step's cost grows
with the answer, and each copy is a fresh allocation (on a CPU, often fresh pages). Here each
block's keys and values are views of a buffer with spare room: a step writes its new position,
and only a pass that outgrows the buffer copies it, into one twice as long (never past the
longest the request can reach), so a long answer pays a few copies, not one per token. The
views hold the same values as ``DynamicCache``'s tensors; attention reads them through their
strides.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` whose ``keys`` / ``values`` are views ``[:, :, :n]`` of buffers with room
    for ``capacity`` positions. A parent method that replaces them (crop, beam reordering) is
    honoured: the next ``update`` copies what it left into a new buffer."""

    def __init__(self, capacity: int = 0, limit: int | None = None) -> None:
        super().__init__()
        self.capacity = capacity  # positions of the first buffer
        self.limit = limit  # the most positions the request can reach: no buffer grows past it
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, H, C, Dh) each
        self._handed: torch.Tensor | None = None  # the keys view the last ``update`` returned
        self._zeroed = False  # the buffers' unwritten positions hold zeros (``with_room``)

    def _make_room(self, key_states: torch.Tensor, value_states: torch.Tensor) -> int:
        """Buffers that hold the current keys and values and have room for this pass's
        positions; returns the current length ``n``."""
        keys = self.keys if self.keys is not None and self.keys.dim() == 4 else None
        n = 0 if keys is None else keys.shape[-2]
        room = key_states.shape[-2]
        if self._buffers is not None and self.keys is self._handed and n + room <= self._buffers[0].shape[-2]:
            return n
        size = max(self.capacity, 2 * n)
        size = max(n + room, min(size, self.limit) if self.limit else size)
        B, Hk, _, Dk = key_states.shape
        k = key_states.new_empty(B, Hk, size, Dk)  # (B, H, C, Dh)
        v = value_states.new_empty(B, value_states.shape[1], size, value_states.shape[-1])
        if keys is not None and self.values is not None and n:
            k[:, :, :n].copy_(keys)
            v[:, :, :n].copy_(self.values)
        self._buffers = (k, v)
        self._zeroed = False
        return n

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self._make_room(key_states, value_states)
        end = n + key_states.shape[-2]
        assert self._buffers is not None
        k, v = self._buffers
        k[:, :, n:end].copy_(key_states)  # this pass's positions, written in place
        v[:, :, n:end].copy_(value_states)
        self.keys, self.values = k[:, :, :end], v[:, :, :end]  # (B, H, end, Dh) views
        self._handed = self.keys
        return self.keys, self.values

    def with_room(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The whole buffers ``(B, H, C, Dh)`` behind ``keys`` / ``values`` when they are the views
        the last ``update`` handed out (their first ``K`` positions), zeros after them; else None.
        The zeros are written at the first call for a buffer (positions are written in order, so
        later ones stay zero until a step writes them): a product over the whole buffer then meets
        finite values there, and a cache no one asks keeps its unwritten pages untouched."""
        if self._buffers is None or keys is not self._handed or values is not self.values:
            return None
        if not self._zeroed:
            n = keys.shape[-2]
            for buffer in self._buffers:
                buffer[:, :, n:].zero_()
            self._zeroed = True
        return self._buffers

    def reset(self) -> None:
        self._buffers = self._handed = None
        super().reset()


class GrowingCache(DynamicCache):
    """``DynamicCache`` of ``GrowingLayer``\\ s, one per block."""

    def __init__(self, num_layers: int, capacity: int, limit: int | None = None) -> None:
        Cache.__init__(self, layers=[GrowingLayer(capacity, limit) for _ in range(num_layers)])

    def with_room(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``GrowingLayer.with_room`` of block ``layer_idx`` (0-based)."""
        layer = self.layers[layer_idx]
        return layer.with_room(keys, values) if isinstance(layer, GrowingLayer) else None


FIRST_ROOM = 128  # new positions the first buffer holds beyond the prompt


def growing_cache(text_config: Any, prompt_length: int, new_tokens: int) -> GrowingCache | None:
    """A cache for a prompt of ``prompt_length`` positions and up to ``new_tokens`` new ones:
    room for ``FIRST_ROOM`` of them at first (a short answer does not hold memory for a long
    one), growing up to all of them. None for a model with sliding-window blocks (their own cache
    layers stay)."""
    types = getattr(text_config, "layer_types", None) or ["full_attention"] * text_config.num_hidden_layers
    if any(t != "full_attention" for t in types):
        return None
    limit = prompt_length + new_tokens
    return GrowingCache(len(types), min(limit, prompt_length + FIRST_ROOM), limit)
