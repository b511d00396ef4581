"""The VRGA head filter: the prefill analysis in the last block, the boost at every later step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from mllm_refine.components import AttentionRow, HeadFilter, ModelInfo, Needs, first_grid_maps, resolve_layers
from mllm_refine.lazy import F, torch
from mllm_refine_plugins.vrga.region import (
    dilate,
    edge_mask,
    focus_tokens,
    grid_cells,
    reference_map,
    sequence_neighbours,
)
from mllm_refine_plugins.vrga.stats import TINY, background_pool, engaged_heads, row_stats, select_heads

# Qwen2.5-VL-7B (28 blocks x 28 heads): the authors' code takes its background heads among the
# first 63 (block, head) pairs, 63 / 784 of them.
BACKGROUND_SHARE = 63 / 784


@dataclass
class VRGAFilter(HeadFilter):
    """VRGA: boost the question's focus region in visually engaged heads at every decode step
    (the steps after the prefill; the prefill's own row, which yields the first answer token,
    is never reweighted, as in the authors' code). Parameters in docs/methods/vrga.md."""

    name = "vrga"
    noop_params = {"gamma": 0.0}
    gamma: float = 0.5  # focus probabilities are multiplied by 1 + gamma
    # Analysed prefill row. code: the token before the question's last token (the authors' row,
    # ``q_end_pos - 1`` with ``q_end_pos`` the last question token); question: the question's
    # last token; prompt: the last prompt token (the one that yields the first answer token).
    row: Literal["code", "question", "prompt"] = "code"
    visual_q: float = 0.05  # visual heads: EFR at or below this quantile ...
    ratio_q: float = 0.95  # ... and R at or above this quantile
    background_r: float = 0.01  # background heads: R below this, among ...
    background_share: float | None = BACKGROUND_SHARE  # ... the first round(share * L * H) pairs
    early: list[int] | None = None  # background_share None: ... every head of these blocks; None: 1 .. max(1, L // 4)
    maps: Literal["raw", "renorm"] = "raw"  # head maps: the row's image probabilities, or renormalised per head
    norm: Literal["sum", "max"] = "sum"  # scaling of each mean map before the difference
    sinks: Literal["edge", "mean"] | None = "edge"  # tokens left out of the focus rule
    edge_cap: float = 0.2  # edge: at most this share of the region is masked
    lead: int = 1  # edge and skip: region positions before the first image token (Qwen's <|vision_start|>)
    sink: float = 10.0  # mean: tokens whose all-head mean map exceeds sink / n
    focus_rule: Literal["code", "paper"] = "code"  # where the threshold's mean and std come from
    focus_std: float = 0.6  # focus: score above mean + focus_std * std ...
    min_focus: int = 10  # ... else the min_focus largest
    neighbours: Literal["sequence", "grid"] = "sequence"  # +-radius along the token sequence, or a grid square
    skip: int = 3  # focus tokens at region positions below this (lead included) are no centres
    radius: int = 2  # neighbours of each centre boosted too
    engaged_r: float = 0.6  # engaged head: R > engaged_r ...
    engaged_h: float = 0.2  # ... and R > engaged_h * H
    engaged_entropy: Literal["raw", "renorm"] = "raw"  # H of the image probabilities as they are, or renormalised
    layers: list[int] | None = None  # blocks reweighted at decode; None: all

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        for param in ("visual_q", "ratio_q", "edge_cap"):
            if not 0.0 <= getattr(self, param) <= 1.0:
                raise ValueError(f"{param}: {getattr(self, param)} is outside 0..1")
        if self.background_share is not None and not 0.0 <= self.background_share <= 1.0:
            raise ValueError(f"background_share: {self.background_share} is outside 0..1")
        if self.gamma < 0:
            raise ValueError(f"gamma: {self.gamma} must be >= 0")
        if min(self.min_focus, self.radius, self.lead, self.skip) < 0:
            raise ValueError("min_focus, radius, lead, skip: must be >= 0")
        for param, allowed in (
            ("row", ("code", "question", "prompt")),
            ("maps", ("raw", "renorm")),
            ("norm", ("sum", "max")),
            ("sinks", ("edge", "mean", None)),
            ("focus_rule", ("code", "paper")),
            ("neighbours", ("sequence", "grid")),
            ("engaged_entropy", ("raw", "renorm")),
        ):
            if getattr(self, param) not in allowed:
                raise ValueError(f"{param}: {getattr(self, param)!r} is not one of {allowed}")
        if self.focus_rule == "code" and self.sinks != "edge":
            raise ValueError("focus_rule 'code' averages the scores mirrored from the edge mask: it needs sinks 'edge'")
        self._early = resolve_layers(self.early or list(range(1, max(1, L // 4) + 1)), L, "early")
        blocks = self.layers or list(range(1, L + 1))
        self._reweight = [] if self.gamma == 0 else resolve_layers(blocks, L, "layers")

    def active_layers(self) -> list[int]:
        # The last block too: its prefill call runs the analysis.
        return sorted(set(self._reweight) | {self.info.num_layers}) if self._reweight else []

    def needs(self) -> Needs:
        L = self.info.num_layers
        if self.row == "prompt":  # the last block's row is the one its filter call gets
            return Needs(prefill_rows=frozenset(range(1, L)), image_grid=True)
        back = 1 if self.row == "code" else 0
        return Needs(question_rows=frozenset((l, back) for l in range(1, L + 1)), image_grid=True)

    def conflicts(self, parts: Any) -> str | None:
        if sum(p.name == self.name for p in parts.components()) > 1:
            return "listed twice: the boosts would stack and one report hide the other; raise gamma instead"
        return None

    def _rows(self, row: AttentionRow, last: torch.Tensor) -> dict[int, torch.Tensor]:
        """Block -> the analysed prefill row (B, H, T) of every block."""
        if self.row == "prompt":
            return {**row.prefill_rows, row.layer: last}
        back = 1 if self.row == "code" else 0
        return {l: r for (l, b), r in row.question_rows.items() if b == back}

    def analyse(self, row: AttentionRow, last: torch.Tensor) -> torch.Tensor:
        """The prefill analysis, in the last block with its row ``last`` (B, H, T): ``(B, T)``
        bool, the prompt keys to boost (centres and their neighbours)."""
        index, slots, grid = row.image_index, row.image_slots, row.image_grid  # (B, I), (B, I), per sample
        assert index is not None and slots is not None and grid is not None  # Needs(image_grid=True) and a prefill
        rows = self._rows(row, last)
        layers = sorted(rows)
        T = last.shape[-1]
        image_keys, valid = row.image_keys[:, :T], row.key_valid[:, :T]  # (B, T)
        ratios, entropies, head_maps = [], [], []
        for l in layers:
            probs = rows[l]  # (B, H, T)
            r, h = row_stats(probs, image_keys, valid)  # (B, H) each
            img = probs.gather(2, index[:, None, :].expand(-1, probs.shape[1], -1)) * slots[:, None, :]  # (B, H, I)
            if self.maps == "renorm":
                img = img / img.sum(-1, keepdim=True).clamp_min(TINY)
            ratios.append(r)
            entropies.append(h)
            head_maps.append(img)
        ratio, entropy = torch.cat(ratios, 1), torch.cat(entropies, 1)  # (B, N), N = L * H
        maps = torch.cat(head_maps, 1)  # (B, N, I)
        H = ratios[0].shape[1]
        pool = background_pool(layers, H, self.background_share, self._early).to(ratio.device)  # (N,)
        efr = entropy / ratio.clamp_min(TINY)
        visual, background = select_heads(ratio, efr, pool, self.visual_q, self.ratio_q, self.background_r)
        ref = reference_map(maps, visual, background, self.norm)  # (B, I)
        counts = slots.sum(1)  # (B,)
        stats = stats_valid = None
        if self.sinks == "edge":
            edge = edge_mask(grid, counts.tolist(), index.shape[1], self.lead, self.edge_cap)
            masked, stats, stats_valid = (t.to(index.device) for t in edge)
        elif self.sinks == "mean":
            masked = slots & (maps.mean(1) > self.sink / counts[:, None].clamp_min(1))
        else:
            masked = torch.zeros_like(slots)
        focus = focus_tokens(ref, slots, masked, self.focus_std, self.min_focus, self.focus_rule, stats, stats_valid)
        focus = focus & (ref.sum(1, keepdim=True) > 0)  # no region without a reference map
        position = torch.arange(index.shape[1], device=index.device)[None, :]  # (1, I)
        centres = focus & (position + self.lead >= self.skip)
        if self.neighbours == "grid":
            cells = grid_cells(grid, row.row_end_tokens, index.shape[1]).to(index.device)
            boost = dilate(centres, cells, self.radius) & slots  # (B, I)
        else:
            boost = sequence_neighbours(centres, slots, self.radius)  # (B, I)
        keys = torch.zeros(index.shape[0], T + 1, dtype=torch.bool, device=index.device)
        keys.scatter_(1, torch.where(slots, index, T), boost)  # padding slots go to the extra column
        row.state[self.state_key + ":report"] = {
            "visual_heads": [[[layers[n // H], n % H] for n in v.nonzero().flatten().tolist()] for v in visual.cpu()],
            "focus": [f.nonzero().flatten().tolist() for f in focus.cpu()],
            "map": first_grid_maps(ref, grid, row.row_end_tokens),  # A_ref on the image grid
        }
        return keys[:, :T]

    def probs(self, probs: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        key = self.state_key
        if row.step == 0:
            if row.layer == self.info.num_layers:
                row.state[key] = self.analyse(row, probs)
            return probs
        if row.layer not in self._reweight:
            return probs
        K = probs.shape[-1]
        cached = row.state.get(key + ":step")
        if cached is None or cached[0] != K:  # once per step: every block of it has the same keys
            boost = F.pad(row.state[key], (0, K - row.state[key].shape[1])).to(probs.dtype)  # (B, K): new tokens are no image
            image = row.image_keys.to(probs.dtype)  # (B, K)
            share = row.key_valid.sum(1, keepdim=True).to(probs.dtype) / image.sum(1, keepdim=True).clamp_min(1)  # (B, 1) n_valid / n_image
            weights = (self.gamma * boost)[:, None, :]  # (B, 1, K): gamma on the boosted keys
            one = torch.ones((), dtype=probs.dtype, device=probs.device)
            cached = row.state[key + ":step"] = (K, image[:, None, :], share, weights, one)
        _, image, share, weights, one = cached
        engaged = engaged_heads(probs, image, share, self.engaged_r, self.engaged_h, self.engaged_entropy)  # (B, H)
        # a * (1 + gamma) on the boosted keys of engaged heads, renormalised: the row's new total
        # is 1 + gamma * (its mass on boosted keys).
        extra = probs * weights  # (B, H, K): gamma * a on the boosted keys
        e = engaged.unsqueeze(-1).to(probs.dtype)  # (B, H, 1)
        p = torch.addcmul(probs, e, extra)  # (B, H, K)
        return p.div_(torch.addcmul(one, e, extra.sum(-1, keepdim=True)))  # (B, H, K) / (B, H, 1)

    def report(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Per sample: the visual heads ``[block, head]``, the focus tokens (indices among the
        sample's image tokens, before the skip and the neighbours) and ``A_ref`` on the image
        grid (``map``) of the prefill analysis."""
        return dict(state.get(self.state_key + ":report", {}))
