"""Reference-style decoding: how the public code of these methods runs, for cost comparison.

The model is asked for ``output_attentions=True`` and ``output_hidden_states=True`` with eager
attention (every block's full ``(1, H, Q, K)`` attention matrix is materialised and returned),
batch size 1, and a hand-written greedy loop recomputes what the method needs from those full
outputs at every step. ``use_cache=False`` is the "no reuse" reading: each step runs the whole
sequence again, as attention-map methods that re-read every row do; ``use_cache=True`` keeps the
KV cache (DoLa's and DeCo's forks do), the stronger baseline.

Head filters act inside a registered eager attention function on the rows that produce tokens
(the last prompt row and every generated row). Nothing here calls the engine's capture, step
view or parts: only their settings (candidate layers, alpha, ...) are read, so agreeing tokens
are an independent check of the engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from benchmarks.measure import sync
from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.compat import cache_kwarg
from mllm_refine.data.sample import Sample
from mllm_refine.engine.config import DecodeConfig
from mllm_refine.engine.parts import Parts

REFERENCE_ATTENTION = "mllm_refine_bench_eager"
RowFilter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Active:
    """What the eager attention function applies while a reference loop runs."""

    filters: dict[int, list[RowFilter]] = field(default_factory=dict)  # block -> filters, in recipe order
    first_row: int = 0  # absolute position of the first row that produces a token (T0 - 1)
    image_keys: torch.Tensor | None = None  # (T0,) bool


_ACTIVE = _Active()


def reference_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, H, Q, Dh)
    key: torch.Tensor,  # (1, Hkv, K, Dh)
    value: torch.Tensor,  # (1, Hkv, K, Dh)
    attention_mask: torch.Tensor | None,  # (1, 1, Q, K) additive
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformers' eager attention, plus the active row filters on pre-softmax scores."""
    rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(rep, dim=1)  # (1, H, K, Dh)
    value = value.repeat_interleave(rep, dim=1)
    Q, K = query.shape[2], key.shape[2]
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (1, H, Q, K)
    filters = _ACTIVE.filters.get(module.layer_idx + 1, [])
    start = max(0, _ACTIVE.first_row - (K - Q))  # first filtered row among the Q rows
    if filters and start < Q:
        positions = torch.arange(K - Q + start, K, device=query.device)  # absolute row positions
        valid = torch.arange(K, device=query.device)[None, :] <= positions[:, None]  # (Q', K) causal
        image = F.pad(_ACTIVE.image_keys, (0, K - _ACTIVE.image_keys.shape[0]))  # (K,)
        rows = scores[0, :, start:].transpose(0, 1)  # (Q', H, K): one "batch" row per position
        for f in filters:
            rows = f(rows, valid, image[None, :].expand(len(positions), K))
        scores = torch.cat([scores[:, :, :start], rows.transpose(0, 1)[None]], dim=2)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :K]
    elif Q > 1:  # no mask handed over: plain causal, queries at the last Q positions
        causal = torch.ones(Q, K, dtype=torch.bool, device=query.device).tril(K - Q)
        scores = scores.masked_fill(~causal, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (1, H, Q, K)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (1, Q, H, Dh)
    return out, weights


AttentionInterface.register(REFERENCE_ATTENTION, reference_attention)
AttentionMaskInterface.register(REFERENCE_ATTENTION, eager_mask)


def head_norm_filter(count: int, gamma: float, image_only: bool) -> RowFilter:
    """DualPD: the ``count`` heads with the lowest L2 norm of their scores get ``scores * gamma``."""

    def apply(scores: torch.Tensor, valid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        keep = valid & image if image_only else valid  # (R, K)
        norm = (scores * keep[:, None, :]).norm(dim=-1)  # (R, H)
        low = norm.topk(count, dim=-1, largest=False).indices  # (R, count)
        factor = torch.ones_like(norm).scatter_(1, low, gamma)  # (R, H)
        return scores * factor[:, :, None]

    return apply


def pai_filter(alpha: float) -> RowFilter:
    """PAI: ``s + alpha * |s|`` on the image keys."""

    def apply(scores: torch.Tensor, valid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.where(image[:, None, :], scores + alpha * scores.abs(), scores)

    return apply


@dataclass
class Outputs:
    """One step's full model outputs, batch 1, at the last position."""

    logits: torch.Tensor  # (V,) float32
    attentions: tuple[torch.Tensor, ...]  # L x (1, H, Q, K)
    hidden: tuple[torch.Tensor, ...]  # L + 1 x (1, Q, D); the last one already normed
    image_pos: torch.Tensor  # (I,) key positions of the image tokens
    adapter: ModelAdapter

    def lens(self, layer: int, final_norm: bool) -> torch.Tensor:
        """``(V,)`` ``lm_head(norm(h_layer))`` at the last position (``layer`` < L)."""
        if layer >= len(self.hidden) - 1:
            raise ValueError(f"layer {layer}: the model returns the last block's output already normed")
        h = self.hidden[layer][0, -1]
        if final_norm:
            h = self.adapter.final_norm(h)
        return self.adapter.lm_head(h).float()

    def image_attention(self, layer: int) -> torch.Tensor:
        """``(H, I)`` last row of block ``layer`` over the image tokens, renormalised per head."""
        a = self.attentions[layer - 1][0, :, -1, self.image_pos].float()
        return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


Method = Callable[[Outputs], torch.Tensor]  # full outputs -> (V,) logits to decode from


def hellinger_layer(candidates: list[int]) -> Callable[[Outputs], int]:
    def pick(o: Outputs) -> int:
        mean = {l: o.image_attention(l).mean(0) for l in {c - 1 for c in candidates} | set(candidates)}
        shift = [(mean[c - 1].sqrt() - mean[c].sqrt()).norm() / math.sqrt(2) for c in candidates]
        return candidates[int(torch.stack(shift).argmax())]

    return pick


def dola_layer(candidates: list[int], final_norm: bool, form: str) -> Callable[[Outputs], int]:
    """Hugging Face's ``_dola_decoding`` premature-layer choice (``js``: textbook JS)."""

    def pick(o: Outputs) -> int:
        final = o.logits[None]  # (1, V)
        early = torch.stack([o.lens(l, final_norm) for l in candidates])  # (C, V)
        m = 0.5 * (F.softmax(final, -1) + F.softmax(early, -1))  # (C, V)
        if form == "dola":
            kl1 = F.kl_div(F.log_softmax(final, -1), m, reduction="none").mean(-1)
            kl2 = F.kl_div(F.log_softmax(early, -1), m, reduction="none").mean(-1)
        else:
            kl1 = (F.softmax(final, -1) * (F.log_softmax(final, -1) - m.log())).sum(-1)
            kl2 = (F.softmax(early, -1) * (F.log_softmax(early, -1) - m.log())).sum(-1)
        return candidates[int((0.5 * (kl1 + kl2)).argmax())]

    return pick


def contrast(pick: Callable[[Outputs], int], combiner: Any) -> Method:
    """``layer_contrast`` (logits or log-softmax space) and ``dola_contrast``."""
    log_space = combiner.name == "dola_contrast" or getattr(combiner, "space", "logits") == "log_softmax"

    def step(o: Outputs) -> torch.Tensor:
        early = o.lens(pick(o), combiner.final_norm)
        final = o.logits
        if log_space:
            dz = final.log_softmax(-1) - early.log_softmax(-1)
            lp = final.log_softmax(-1)
            keep = lp >= lp.max() + (math.log(combiner.alpha) if combiner.alpha > 0 else -math.inf)
        else:
            dz = final - early
            p = final.softmax(-1)
            keep = p >= combiner.alpha * p.max()
        return dz.masked_fill(~keep, float("-inf"))

    return step


def deco(selector: Any, combiner: Any) -> Method:
    """DeCo: candidates from the final layer, anchor = the preceding layer surest of one of them."""
    layers = selector.candidates()

    def step(o: Outputs) -> torch.Tensor:
        probs = o.logits.softmax(-1)
        top, ids = probs.topk(min(selector.top_k, probs.numel()))  # (k,)
        keep = top.cumsum(-1) <= selector.top_p
        keep[0] = True
        lens = torch.stack([o.lens(l, selector.final_norm) for l in layers])  # (A, V)
        p = lens.softmax(-1)[:, ids].masked_fill(~keep[None], -1.0).flatten()  # (A * k,)
        best = int(p.argmax())
        z = o.logits + combiner.alpha * p[best] * lens[best // len(ids)]
        allowed = torch.zeros_like(z, dtype=torch.bool)
        allowed[ids[keep]] = True
        return z.masked_fill(~allowed, float("-inf"))

    return step


def build_method(parts: Parts) -> tuple[Method, dict[int, list[RowFilter]]] | str:
    """The reference-style step and row filters for ``parts`` (bound by a Decoder), or why none."""
    if parts.input_refiners:
        return "input refiners run extra passes: no reference loop"
    filters: dict[int, list[RowFilter]] = {}
    for f in parts.head_filters:
        if f.name == "head_norm_filter":
            fn = head_norm_filter(f.count, f.gamma, f.keys == "image")
        elif f.name == "pai":
            fn = pai_filter(f.alpha)
        else:
            return f"no reference for head filter {f.name!r}"
        for layer in f.active_layers():
            filters.setdefault(layer, []).append(fn)
    sel, comb = parts.layer_selector, parts.logit_combiner
    if sel is None and comb is None:
        return (lambda o: o.logits), filters
    if comb is None or sel is None:
        return f"no reference for logit combiner {getattr(comb, 'name', None)!r} alone"
    if sel.name == "deco_anchor" and comb.name == "deco_modulate":
        return deco(sel, comb), filters
    if comb.name not in ("layer_contrast", "dola_contrast"):
        return f"no reference for logit combiner {comb.name!r}"
    if sel.name == "hellinger_shift":
        return contrast(hellinger_layer(sel.candidates()), comb), filters
    if sel.name == "dola_jsd":
        return contrast(dola_layer(sel.candidates(), sel.final_norm, sel.divergence), comb), filters
    return f"no reference for layer selector {sel.name!r}"


def _post(logits: torch.Tensor, final: torch.Tensor, sequence: torch.Tensor, suppress: list[int], penalty: float) -> torch.Tensor:
    """Image tokens never emitted; a broken row falls back to the final logits; repetition penalty."""
    logits = logits.clone()
    logits[suppress] = float("-inf")
    if torch.isnan(logits).any() or torch.isposinf(logits).any() or not torch.isfinite(logits).any():
        logits = final.clone()
        logits[suppress] = float("-inf")
    if penalty != 1.0:
        seen = logits[sequence]
        logits[sequence] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits


def reference_generate(
    model: torch.nn.Module,
    adapter: ModelAdapter,
    sample: Sample,
    method: Method,
    filters: dict[int, list[RowFilter]],
    config: DecodeConfig,
    eos: set[int],
    use_cache: bool,
    stamps: list[float],
    generate_start: list[float],
) -> list[int]:
    """Greedy decoding of one sample from full eager outputs; stamps each chosen token."""
    device = model.device
    inputs = adapter.prepare([sample]).to(device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    ids = inputs["input_ids"]  # (1, T0)
    image = adapter.image_keys(ids)[0]  # (T0,)
    image_pos = image.nonzero().flatten()  # (I,)
    suppress = adapter.image_token_ids
    text = adapter.text_config
    saved = text._attn_implementation
    text._attn_implementation = REFERENCE_ATTENTION
    _ACTIVE.filters, _ACTIVE.first_row, _ACTIVE.image_keys = filters, ids.shape[1] - 1, image
    new: list[int] = []
    past = None
    sync(device)
    generate_start.append(time.perf_counter())
    try:
        with torch.no_grad():
            for _ in range(config.max_new_tokens):
                sequence = torch.cat([ids, torch.tensor([new], dtype=ids.dtype, device=device)], dim=1)  # (1, T)
                mask = torch.ones_like(sequence)
                if use_cache and past is not None:
                    kwargs = {"input_ids": sequence[:, -1:], "attention_mask": mask, cache_kwarg(): past}
                else:
                    kwargs = dict(inputs, input_ids=sequence, attention_mask=mask)
                out = model(**kwargs, use_cache=use_cache, output_attentions=True, output_hidden_states=True)
                past = out[cache_kwarg()] if use_cache else None
                final = out.logits[0, -1].float()  # (V,)
                o = Outputs(final, out.attentions, out.hidden_states, image_pos, adapter)
                logits = _post(method(o), final, sequence[0], suppress, config.repetition_penalty)
                token = int(logits.argmax())
                sync(device)
                stamps.append(time.perf_counter())
                new.append(token)
                if token in eos:
                    break
    finally:
        text._attn_implementation = saved
        _ACTIVE.filters, _ACTIVE.image_keys = {}, None
    return new
