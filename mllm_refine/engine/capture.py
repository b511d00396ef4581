"""Probes: capture only what the recipe's parts declared, inside the ordinary forward pass.

A registered attention function (transformers' ``AttentionInterface``) runs ``sdpa`` for every
block. In blocks that a part probes or filters, it also recomputes the *current query row* (the
last position) eagerly: ``(B, H, K)`` scores, never the ``(B, H, T, T)`` matrix. Forward hooks keep
the residual stream at the last position of the requested layers, ``(B, D)`` each.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from typing import Any, Iterator, Mapping

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.components.head_filter import AttentionRow, HeadFilter
from mllm_refine.components.needs import Needs
from mllm_refine.functional import positions
from mllm_refine.lazy import nn, torch

ATTENTION_NAME = "mllm_refine"
_sdpa: Any = None  # transformers' sdpa attention, set by register_attention
_CAPTURE_ATTR = "_mllm_refine_capture"


def refine_attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, Q, Dh)
    key: torch.Tensor,  # (B, Hkv, K, Dh)
    value: torch.Tensor,  # (B, Hkv, K, Dh)
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``sdpa``, plus the probes and filters of an active ``Capture`` on this module."""
    capture = getattr(module, _CAPTURE_ATTR, None)
    if capture is not None and query.shape[2] == 1 and capture.owns_row(module):
        # A decode step of a probed block: the probe's eager row is the whole output, so sdpa
        # would compute the same (B, 1, H, Dh) a second time.
        return capture.on_attention(module, query, key, value, attention_mask, scaling, None), None
    out, weights = _sdpa(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if capture is not None:
        out = capture.on_attention(module, query, key, value, attention_mask, scaling, out)
    return out, weights


def row_scores(
    query: torch.Tensor, key: torch.Tensor, scaling: float | None, room: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, H, K)`` float32 (or wider) pre-softmax scores of the last query row of ``query``
    (B, H, Q, Dh) against ``key`` (B, Hkv, K, Dh); grouped heads share a key head without a copy.
    The product runs in the model's dtype, as eager attention's does: upcasting ``key`` first
    would copy the whole cache at every probed block of every step. ``room`` (B, Hkv, C, Dh),
    C >= K: the buffer ``key`` is the first K positions of (``Capture.rooms``); the product runs
    over all of it and keeps the first K scores."""
    B, H, Q, Dh = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else Dh**-0.5
    q = (query[:, :, -1:, :] if Q > 1 else query).reshape(B * Hkv, H // Hkv, Dh)  # (B Hkv, rep, Dh): h = g * rep + r
    if room is not None:
        C = room.shape[2]
        scores = torch.bmm(q, room.view(B * Hkv, C, Dh).transpose(1, 2))[..., :K]  # (B Hkv, rep, K) of (.., C)
        return scores.to(torch.float32, memory_format=torch.contiguous_format).mul_(scale).view(B, H, K)
    # bmm over 3-D views: the cache's keys merge (B, Hkv) without a copy, and matmul's 4-D path
    # would add an expand and a view per operand; einsum copies K into a permuted layout.
    scores = torch.bmm(q, key.reshape(B * Hkv, K, Dh).transpose(1, 2))  # (B Hkv, rep, K), a fresh tensor
    if scores.dtype.itemsize < 4:  # half precision: the row is widened to float32 (no copy otherwise)
        scores = scores.float()
    return scores.mul_(scale).view(B, H, K)  # (B, H, K)


def prompt_row(
    query: torch.Tensor, key: torch.Tensor, scaling: float | None, key_valid: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``(B, H, K)`` post-softmax attention of the prompt query at ``positions`` (B,), one per
    sample, of a prefill pass (``query`` (B, H, T, Dh), ``key`` (B, Hkv, K, Dh)): the causal row,
    zero on later keys and outside ``key_valid`` (B, K)."""
    B, H, _, Dh = query.shape
    q = query.gather(2, positions.view(B, 1, 1, 1).expand(B, H, 1, Dh))  # (B, H, 1, Dh)
    scores = row_scores(q, key, scaling)  # (B, H, K)
    K = scores.shape[-1]
    allowed = key_valid & (torch.arange(K, device=key.device)[None, :] <= positions[:, None])  # (B, K)
    return torch.softmax(scores.masked_fill(~allowed[:, None, :], float("-inf")), dim=-1)


def row_output(
    probs: torch.Tensor, value: torch.Tensor, out: torch.Tensor | None, dtype: torch.dtype, room: torch.Tensor | None = None
) -> torch.Tensor:
    """The block's attention output ``(B, Q, H, Dh)`` with its last row made from ``probs``
    (B, H, K) and ``value`` (B, Hkv, K, Dh); ``out`` None: the output is that row alone (Q = 1).
    ``probs`` meet ``value`` in the model's dtype, as in eager and flash attention. ``room``
    (B, Hkv, C, Dh): the zero-tailed buffer behind ``value``; the weights are padded with zeros
    to its C positions."""
    B, H, K = probs.shape
    Hkv, Dh = value.shape[1], value.shape[3]
    if room is not None:
        C = room.shape[2]
        p = probs.new_zeros(B * Hkv, H // Hkv, C, dtype=room.dtype)  # (B Hkv, rep, C): no weight past K
        p[..., :K] = probs.reshape(B * Hkv, H // Hkv, K)
        row = torch.bmm(p, room.view(B * Hkv, C, Dh)).view(B, 1, H, Dh)  # (B, 1, H, Dh)
    else:
        p = probs.reshape(B * Hkv, H // Hkv, K)  # (B Hkv, rep, K)
        if p.dtype != value.dtype:
            p = p.to(value.dtype)
        row = torch.bmm(p, value.reshape(B * Hkv, K, Dh)).view(B, 1, H, Dh)  # (B, 1, H, Dh)
    if row.dtype != dtype:
        row = row.to(dtype)
    if out is None:
        return row
    if out.requires_grad:  # sdpa's backward reads its own output: never edit it in place
        return torch.cat([out[:, :-1], row], dim=1)
    out[:, -1:] = row  # sdpa's output is a fresh tensor of this call
    return out


@cache
def register_attention() -> None:
    """Make ``ATTENTION_NAME`` a transformers attention implementation (with sdpa's mask); once,
    when a model first needs it, so importing this module does not import transformers."""
    global _sdpa
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    _sdpa = sdpa_attention_forward  # resolved once, not in every block's call
    AttentionInterface.register(ATTENTION_NAME, refine_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextmanager
def refine_attention_on(adapter: ModelAdapter) -> Iterator[None]:
    """Route the language model's attention through ``refine_attention`` (plain sdpa when idle)
    while the block runs; the model's own implementation is restored after it, so a model the
    caller loaded is left as it was."""
    register_attention()
    config = adapter.text_config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def _row_key_mask(attention_mask: torch.Tensor | None, batch: int, keys: int, device: torch.device) -> torch.Tensor:
    """``(B, K)`` bool: keys the last query row may attend to."""
    if attention_mask is None:  # no padding: the last row sees every key
        return torch.ones(batch, keys, dtype=torch.bool, device=device)
    row = attention_mask[:, 0, -1, :keys]  # (B or 1, K)
    if row.dtype != torch.bool:
        row = row == 0  # additive float mask: 0 where allowed
    return row.expand(batch, keys)


class Capture:
    """What one request captures; attached to the attention modules while ``installed``."""

    def __init__(self, adapter: ModelAdapter, needs: Needs, filters: list[HeadFilter]) -> None:
        self.adapter = adapter
        self.needs = needs
        self.filters: dict[int, list[HeadFilter]] = {}
        for f in filters:
            for layer in f.active_layers():
                self.filters.setdefault(layer, []).append(f)
        self.step = 0
        self.state: dict[str, Any] = {}
        self.attention: dict[int, torch.Tensor] = {}  # layer -> (B, H, I) raw probabilities
        self.hidden: dict[int, torch.Tensor] = {}  # layer -> (B, D)
        self.tables: dict[Any, Any] = {}  # lookup tables a step view builds once per request
        self.prefill_rows: dict[int, torch.Tensor] = {}  # layer -> (B, H, T)
        self.scores: dict[int, torch.Tensor] = {}  # layer -> (B, H, K) pre-softmax, before filters
        self.question_rows: dict[tuple[int, int], torch.Tensor] = {}  # (layer, back) -> (B, H, T)
        self.question_last: torch.Tensor | None = None  # (B,) position of each last question token
        self._question_backs: dict[int, list[int]] = {}  # layer -> the ``back`` offsets it keeps
        for layer, back in sorted(needs.question_rows):
            self._question_backs.setdefault(layer, []).append(back)
        self.paused = False  # True while a branch pass runs: no probe records, no filter acts
        self.branches: Any = None  # engine.branches.BranchRunner when Needs.branches is set
        self.branch_logits: dict[str, torch.Tensor] = {}  # name -> (B, V) at the current step
        self._masks: tuple | None = None  # (attention_mask, (step, B, H, K), this pass's AttentionRow)
        self._gather: torch.Tensor | None = None  # (B, H, I) image positions, per pass
        self.cache: Any = None  # the pass's ``GrowingCache`` while ``installed`` with one

    @contextmanager
    def pause(self) -> Iterator["Capture"]:
        """Run another forward (a ``Needs.branches`` pass) untouched by this request's probes."""
        self.paused = True
        try:
            yield self
        finally:
            self.paused = False

    def begin(
        self, input_ids: torch.Tensor, inputs: Mapping[str, torch.Tensor] | None = None, samples: list | None = None
    ) -> None:
        """Locate each sample's image tokens in the prompt ``(B, T)``; with ``Needs.image_grid``,
        also their grids, from the prepared ``inputs``; with ``Needs.question_rows``, each
        sample's last question token, from the ``samples`` the batch was prepared from."""
        if self.needs.image_grid and inputs is None:
            raise ValueError("Needs.image_grid: Capture.begin needs the prepared inputs to locate image grids")
        if self.needs.question_rows:
            if samples is None:
                raise ValueError("Needs.question_rows: Capture.begin needs the samples to locate their questions")
            self.question_last = self.adapter.question_last(samples, input_ids)  # (B,)
        self.image_grid = self.adapter.image_grid(inputs) if self.needs.image_grid and inputs is not None else None
        self._masks = None
        mask = inputs.get("attention_mask") if inputs is not None else None
        # (B, T) bool: real prompt tokens, False on left padding.
        self.prompt_valid = mask.bool() if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        self.prompt_image_keys = self.adapter.image_keys(input_ids)  # (B, T)
        # Padded per-sample index of image positions: (B, I), slots beyond a sample's count masked.
        self.image_index, self.image_slots = positions(self.prompt_image_keys)  # (B, I) each
        self.full_slots = bool(self.image_slots.all())  # every sample has I image tokens: no slot to zero
        # (B,) bool, the samples without an image token, or None when every sample has one: read
        # once here, so no step asks the host.
        missing = ~self.image_slots.any(1)  # (B,)
        self.no_image = None if self.full_slots or not bool(missing.any()) else missing

    def image_keys(self, keys: int) -> torch.Tensor:
        """``(B, K)`` bool image-key mask, the prompt's mask padded with False for new tokens."""
        mask = self.prompt_image_keys
        return torch.nn.functional.pad(mask, (0, keys - mask.shape[1]))

    def _probed(self, layer: int) -> bool:
        needs = self.needs
        return (
            layer in self.filters
            or layer in needs.attention
            or layer in needs.scores
            or (self.step == 0 and (layer in needs.prefill_rows or layer in self._question_backs))
        )

    def rooms(self, module: Any, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """The zero-tailed cache buffers behind ``key`` / ``value`` (``GrowingLayer.with_room``)
        for a bfloat16 model on a CPU, else ``(None, None)``. There a batched product over the
        cache's views (one head's keys start ``C x Dh``, not ``K x Dh``, after the last) takes a
        slow kernel, and the products over the whole buffers a fast one: 4.8x to 5.5x faster at
        batch 16 and 2.1x at batch 1 (32 heads of 128 over 600 keys, ``benchmarks/row_layout.py``).
        Float32 and float16 products run over the views at full speed, so the buffers' extra
        positions would only add work (0.68x to 0.85x); a GPU keeps the views too."""
        if self.cache is None or key.dtype != torch.bfloat16 or key.device.type != "cpu":
            return None, None
        return self.cache.with_room(module.layer_idx, key, value) or (None, None)

    def owns_row(self, module: Any) -> bool:
        """True when ``on_attention`` will compute this block's current row itself."""
        return not self.paused and self._probed(module.layer_idx + 1)

    def _pass_row(self, attention_mask: torch.Tensor | None, batch: int, heads: int, keys: int, device: torch.device) -> AttentionRow:
        """The ``AttentionRow`` of this forward pass, built at its first probed block: every block
        of a pass gets the same mask object and key count, so masks, the image gather index and the
        row itself are made once per pass, and each block only sets ``layer`` on it. A new pass
        also drops the last pass's ``attention``, so the live dict a filter reads holds only the
        blocks before its own in this pass."""
        cached = self._masks
        if cached is not None and cached[0] is attention_mask and cached[1] == (self.step, batch, heads, keys):
            return cached[2]
        self.attention.clear()
        row = AttentionRow(
            layer=0,
            step=self.step,
            key_valid=_row_key_mask(attention_mask, batch, keys, device),  # (B, K)
            image_keys=self.image_keys(keys),  # (B, K)
            state=self.state,
            image_index=self.image_index,
            image_slots=self.image_slots,
            image_grid=self.image_grid,
            row_end_tokens=self.adapter.row_end_tokens,
            attention=self.attention,
            prefill_rows=self.prefill_rows,
            question_rows=self.question_rows,
            question_last=self.question_last,
            padded=attention_mask is not None,  # without a mask the row sees every key
        )
        self._gather = self.image_index[:, None, :].expand(batch, heads, -1)  # (B, H, I)
        self._masks = (attention_mask, (self.step, batch, heads, keys), row)  # holds the mask: its id is not reused
        return row

    def on_attention(
        self,
        module: Any,  # the transformers attention module (``layer_idx``)
        query: torch.Tensor,  # (B, H, Q, Dh)
        key: torch.Tensor,  # (B, Hkv, K, Dh)
        value: torch.Tensor,  # (B, Hkv, K, Dh)
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        out: torch.Tensor | None,  # (B, Q, H, Dh) sdpa output; None: Q = 1 and this call makes it
    ) -> torch.Tensor:
        if out is not None and not self.owns_row(module):
            return out
        layer = module.layer_idx + 1
        filters = self.filters.get(layer, [])
        B, H = query.shape[:2]
        row = self._pass_row(attention_mask, B, H, key.shape[2], query.device)
        row.layer = layer
        key_valid, padded = row.key_valid, row.padded  # (B, K)
        key_room, value_room = self.rooms(module, key, value)  # (B, Hkv, C, Dh) each, or None
        scores = row_scores(query, key, scaling, key_room)  # (B, H, K)
        if self.step == 0 and layer in self._question_backs:
            assert self.question_last is not None  # begin() sets it under Needs.question_rows
            for back in self._question_backs[layer]:
                positions = self.question_last - back  # (B,)
                self.question_rows[(layer, back)] = prompt_row(query, key, scaling, key_valid, positions)
        if layer in self.needs.scores:  # keys the row may not attend to hold 0, so row norms skip them
            self.scores[layer] = scores.masked_fill(~key_valid[:, None, :], 0.0) if padded else scores
        for f in filters:
            scores = f.scores(scores, row)
        if padded:
            scores = scores.masked_fill(~key_valid[:, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # (B, H, K)
        for f in filters:
            probs = f.probs(probs, row)
        if layer in self.needs.attention:
            assert self._gather is not None  # set with this pass's row
            image = probs.gather(2, self._gather)  # (B, H, I)
            self.attention[layer] = image if self.full_slots else image * self.image_slots[:, None, :]
        if layer in self.needs.prefill_rows and self.step == 0:
            self.prefill_rows[layer] = probs  # (B, H, T)
        if filters or out is None:
            out = row_output(probs, value, out, query.dtype, value_room)
        return out

    def _hidden_hook(self, layer: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any = None) -> None:
            if self.paused:
                return
            h = output if output is not None else (args[0] if args else kwargs["hidden_states"])
            h = h[0] if isinstance(h, tuple) else h
            self.hidden[layer] = h[:, -1, :].clone()  # (B, D); a view would keep all (B, T, D) alive

        return hook

    @contextmanager
    def installed(self, cache: Any = None) -> Iterator["Capture"]:
        """Attach to the probed blocks (and ``cache``, the ``GrowingCache`` the pass decodes
        with, if any) until the block ends."""
        adapter = self.adapter
        self.cache = cache
        needs = self.needs
        layers = sorted(set(self.filters) | needs.attention | needs.prefill_rows | needs.scores | set(self._question_backs))
        handles = []
        try:
            for layer in layers:
                setattr(adapter.attention_module(layer), _CAPTURE_ATTR, self)
            for layer in sorted(self.needs.hidden):
                if layer == 0:
                    block = adapter.decoder_layers[0]
                    hook = self._hidden_hook(0)
                    handles.append(block.register_forward_pre_hook(lambda m, a, k, h=hook: h(m, a, k), with_kwargs=True))
                else:
                    hook = self._hidden_hook(layer)
                    handles.append(
                        adapter.decoder_layers[layer - 1].register_forward_hook(
                            lambda m, a, k, o, h=hook: h(m, a, k, o), with_kwargs=True
                        )
                    )
            with refine_attention_on(adapter):
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self.cache = None
            for layer in layers:
                module = adapter.attention_module(layer)
                if hasattr(module, _CAPTURE_ATTR):
                    delattr(module, _CAPTURE_ATTR)
