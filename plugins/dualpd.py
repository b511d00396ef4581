"""DualPD, "Seeing Right but Saying Wrong" (arXiv 2601.07359): two parts, usable alone or together.

1. ``hellinger_shift`` (LayerSelector): the basic layer ``l_b = argmax_l H(Abar_{l-1}, Abar_l)``,
   the block whose head-mean attention over the image moved most from the block before it.
   Pair it with ``layer_contrast`` (``z_N - z_{l_b}`` inside a plausibility set).
2. ``head_norm_filter`` (HeadFilter): in each block, the heads whose pre-softmax scores of the
   current row have the lowest L2 norm (bottom ``ratio``) get their scores multiplied by ``gamma``
   before the softmax: a soft decay, not pruning.

Readings where the paper is silent (parameters, so other readings are one override away):
- candidates: blocks ``2..L - max(1, L // 8)`` (block 1 has no predecessor with attention; the
  last few blocks are left out as "all but the last few layers");
- the head count is ``round(ratio * H)`` per block; the norm runs over the valid keys of the row
  (``keys: all``) or only the image keys (``keys: image``);
- the filter acts on the row that produces the logits (the last prompt token at prefill, then
  each new token), in every block unless ``layers`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from mllm_refine.components import AttentionRow, HeadFilter, LayerSelector, ModelInfo, Needs, StepView, resolve_layers
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch


@dataclass
class HellingerShiftSelector(LayerSelector):
    """DualPD basic layer: the block with the largest Hellinger shift of image attention."""

    name = "hellinger_shift"
    noop_params = {}  # a selector changes nothing by itself: checked beside a combiner that ignores it
    layers: list[int] | None = None  # candidate blocks; None: 2 .. L - max(1, L // 8)

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        default = list(range(2, L - max(1, L // 8) + 1)) or [L]
        self._candidates = resolve_layers(self.layers or default, L, "layers", lowest=2)
        self._blocks = sorted({l for c in self._candidates for l in (c - 1, c)})  # every block read
        slot = {l: i for i, l in enumerate(self._blocks)}
        cur = [slot[c] for c in self._candidates]  # slot of block l, per candidate
        prev = [slot[c - 1] for c in self._candidates]  # slot of block l - 1
        # Candidates that run through consecutive blocks compare neighbouring slots: two views.
        self._neighbours = cur == list(range(1, len(self._blocks))) and prev == list(range(len(self._blocks) - 1))
        self._cur, self._prev = torch.tensor(cur), torch.tensor(prev)  # (C,) each
        self._layer_of = torch.tensor(self._candidates)  # (C,) block number of each candidate
        first = self._candidates[0]
        # Candidates first, first + 1, ...: the chosen block is the argmax plus an offset, no lookup.
        self._offset = first if self._candidates == list(range(first, first + len(self._candidates))) else None

    def candidates(self) -> list[int]:
        return self._candidates

    def needs(self) -> Needs:
        # Each candidate l compares block l with block l - 1.
        return Needs(attention=frozenset(self._blocks))

    def distances(self, view: StepView) -> torch.Tensor:
        """``(B, C)``: ``||sqrt(S_{l-1}) - sqrt(S_l)||`` with ``S_l = H * Abar_l``, the head sum of
        the maps each renormalised over the image: ``sqrt(2 H)`` times each candidate's
        Hellinger shift, so the same argmax, without the two scalings a choice does not need."""
        rows = view.attentions(self._blocks, renormalize=False)  # (B, N, H, I) raw image probabilities
        B, N, H, I = rows.shape
        weight = rows.sum(-1).clamp_min_(torch.finfo(rows.dtype).tiny).reciprocal_()  # (B, N, H): 1 / s_h
        total = torch.bmm(weight.view(B * N, 1, H), rows.view(B * N, H, I))  # (B N, 1, I): sum_h a_h / s_h
        root = total.view(B, N, I).sqrt_()  # (B, N, I) sqrt of each S_l
        if self._neighbours:
            prev, cur = root[:, :-1], root[:, 1:]  # (B, C, I) each, views
        else:
            prev, cur = root[:, self._prev.to(root.device)], root[:, self._cur.to(root.device)]  # (B, C, I) each
        return torch.linalg.vector_norm(prev - cur, dim=-1)  # (B, C)

    def shifts(self, view: StepView) -> torch.Tensor:
        """``(B, C)``: Hellinger shift of each candidate block from the block before it."""
        return self.distances(view) / math.sqrt(2 * self.info.num_heads)  # (B, C): H(Abar_{l-1}, Abar_l)

    def select(self, view: StepView) -> torch.Tensor:
        pick = self.distances(view).argmax(1)  # (B,) index of the largest shift
        layer = pick.add_(self._offset) if self._offset is not None else self._layer_of.to(pick.device)[pick]  # (B,)
        missing = view.no_image  # (B,) or None: every sample has an image
        return layer if missing is None else layer.masked_fill_(missing, -1)  # (B,): -1 for a sample without an image


@dataclass
class HeadNormFilter(HeadFilter):
    """DualPD head filter: decay pre-softmax scores of the lowest-L2-norm heads by gamma."""

    name = "head_norm_filter"
    noop_params = {"gamma": 1.0}
    ratio: float = 0.15  # share of heads per block to suppress
    gamma: float = 0.9  # multiplier of their pre-softmax scores
    layers: list[int] | None = None  # blocks to act in; None: all
    keys: Literal["all", "image"] = "all"  # keys the score norm runs over

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio: {self.ratio} is outside 0..1")
        if self.gamma < 0:
            raise ValueError(f"gamma: {self.gamma} must be >= 0")
        self.count = round(self.ratio * info.num_heads)
        noop = self.count == 0 or self.gamma == 1.0
        blocks = self.layers or list(range(1, info.num_layers + 1))
        self._layers = [] if noop else resolve_layers(blocks, info.num_layers, "layers")

    def active_layers(self) -> list[int]:
        return self._layers

    def lowest(self, scores: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        """``(B, count)`` long: the heads with the lowest score norm, per sample."""
        if self.keys == "all" and not row.padded:
            norm = torch.linalg.vector_norm(scores, dim=-1)  # (B, H): every key is valid
        else:
            keep = row.key_valid if self.keys == "all" else row.key_valid & row.image_keys  # (B, K)
            norm = torch.linalg.vector_norm(scores * keep[:, None, :], dim=-1)  # (B, H)
        if self.count == 1:  # one head per block (15 % of 8 heads): the argmin, without a sort
            return norm.argmin(-1, keepdim=True)  # (B, 1)
        return norm.topk(self.count, dim=-1, largest=False).indices  # (B, count)

    def scores(self, scores: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        lowest = self.lowest(scores, row)  # (B, count)
        factor = torch.ones(scores.shape[:2], dtype=scores.dtype, device=scores.device)  # (B, H)
        factor.scatter_(1, lowest, self.gamma)  # gamma on the suppressed heads, 1 elsewhere
        if row.step == 0:  # for the report: layer -> (B, H) bool
            suppressed = torch.zeros(factor.shape, dtype=torch.bool).scatter_(1, lowest.cpu(), True)
            row.state.setdefault(self.state_key, {})[row.layer] = suppressed
        return scores * factor[:, :, None]

    def report(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Heads suppressed at the first answer token: per sample, ``{layer: [heads]}``."""
        suppressed = state.get(self.state_key)  # layer -> (B, H) bool
        if not suppressed:
            return {}
        batch = next(iter(suppressed.values())).shape[0]
        heads = [{layer: m[b].nonzero().flatten().tolist() for layer, m in sorted(suppressed.items())} for b in range(batch)]
        return {"heads": heads}


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(HellingerShiftSelector)
    register(HeadNormFilter)
