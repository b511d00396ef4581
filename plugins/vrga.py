"""VRGA, "Deeper Thought, Weaker Aim" (arXiv 2603.14184): visual region-guided attention.

Long answers drift away from the image region the question is about. VRGA finds that region
once, from the prefill, and keeps pulling the visually engaged heads back to it at every step.

At prefill, for every (block, head), the last prompt token's attention row ``a`` over keys:
    R   = mean(a on image) / mean(a on all valid keys)       how much the head looks at the image
    H   = entropy(a on image, renormalised)                  how spread that look is
    EFR = H / R
    visual heads:     EFR <= its ``visual_q`` quantile and R >= its ``ratio_q`` quantile, over all
                      (block, head) of the sample (none: R >= the ``ratio_q`` quantile alone)
    background heads: R < ``background_r`` in the ``early`` blocks
    A_ref = relu(norm(mean of visual maps) - norm(mean of background maps)), attention sinks
            zeroed, renormalised                              (B, I)
    focus tokens T_q: A_ref / mean(A_ref) above mean + ``focus_std`` * std, at least
            ``min_focus`` (capped by the image length), plus their grid neighbours within
            ``radius`` (Chebyshev distance, inside the same grid)
At each later step, in every head whose current row has R > ``engaged_r`` and
R > ``engaged_h`` * H, the probabilities at T_q are multiplied by ``1 + gamma``; the row is
renormalised.

Readings where the paper is silent (parameters, named in docs/methods/vrga.md):
- the analysis row is the last prompt token (the row that yields the first answer token);
- the reweighting starts at the second answer token: the prefill's analysis needs every block's
  row, so it runs in the last block of the prefill pass, after the blocks it would reweight;
- ``norm``: each mean map scaled to sum 1 (``sum``) or to max 1 (``max``) before the difference;
- sinks: image tokens whose mean attention over all heads and blocks is above ``sink`` times
  the uniform share ``1 / n`` (``sink: null`` keeps them);
- std and quantiles over a sample's own image tokens and heads: population std, linear quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from mllm_refine.components import AttentionRow, HeadFilter, ModelInfo, Needs, resolve_layers
from mllm_refine.hookspecs import hookimpl

TINY = torch.finfo(torch.float32).tiny


def row_stats(probs: torch.Tensor, image_keys: torch.Tensor, key_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, H)``, each ``(B, H)``, of attention rows ``probs`` (B, H, K): the image's mean
    probability over the mean of all valid keys, and the entropy (nats) of the image part."""
    cols = torch.stack([image_keys, key_valid], dim=-1).to(probs.dtype)  # (B, K, 2) 0/1 columns
    sums = torch.bmm(probs, cols)  # (B, H, 2): attention on image keys, on valid keys
    counts = cols.sum(1).clamp_min(1)  # (B, 2)
    mass = sums[..., 0]  # (B, H)
    ratio = (mass / counts[:, None, 0]) / (sums[..., 1] / counts[:, None, 1]).clamp_min(TINY)
    # Entropy of p = a / m over the image: -sum p log p = log m - (sum a log a) / m.
    a_log_a = torch.bmm(torch.special.xlogy(probs, probs), cols[..., :1])[..., 0]  # (B, H)
    m = mass.clamp_min(TINY)
    entropy = torch.where(mass > 0, m.log() - a_log_a / m, 0.0)
    return ratio, entropy


def engaged_heads(
    probs: torch.Tensor, image_col: torch.Tensor, share: torch.Tensor, engaged_r: float, engaged_h: float
) -> torch.Tensor:
    """``(B, H)`` bool: heads of rows ``probs`` (B, H, K) with ``R > engaged_r`` and
    ``R > engaged_h * H``, the decode-time form of ``row_stats``. A row sums to 1 over its valid
    keys, so their mean is ``1 / n_valid`` and ``R = mass * share`` with ``share = n_valid / n_image``
    (B, 1); ``image_col`` (B, K, 1) marks the image keys. A head with no image mass has R = 0 and
    nothing to boost, so its entropy needs no guard."""
    mass = torch.bmm(probs, image_col)[..., 0]  # (B, H) attention on image keys
    ratio = mass * share  # (B, H)
    m = mass.clamp_min(TINY)
    entropy = m.log() - torch.bmm(torch.special.xlogy(probs, probs), image_col)[..., 0] / m  # (B, H)
    return (ratio > engaged_r) & (ratio > engaged_h * entropy)


def select_heads(
    ratio: torch.Tensor, efr: torch.Tensor, early: torch.Tensor, visual_q: float, ratio_q: float, background_r: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visual, background)`` bool ``(B, N)`` over the N = L * H (block, head) pairs of each
    sample, from ``ratio`` and ``efr`` (B, N); ``early`` (N,) marks heads of the early blocks."""
    low_efr = efr <= torch.quantile(efr, visual_q, dim=1, keepdim=True)
    high_r = ratio >= torch.quantile(ratio, ratio_q, dim=1, keepdim=True)
    visual = low_efr & high_r
    visual = torch.where(visual.any(dim=1, keepdim=True), visual, high_r)  # fallback: R alone
    background = (ratio < background_r) & early[None, :]
    return visual, background


def _norm(x: torch.Tensor, how: str) -> torch.Tensor:
    scale = x.sum(-1, keepdim=True) if how == "sum" else x.amax(-1, keepdim=True)
    return x / scale.clamp_min(TINY)


def reference_map(
    maps: torch.Tensor,
    visual: torch.Tensor,
    background: torch.Tensor,
    slots: torch.Tensor,
    sink: float | None,
    norm: str,
) -> torch.Tensor:
    """``A_ref`` (B, I) from per-head image maps ``maps`` (B, N, I) (each renormalised over the
    image), head masks ``visual``/``background`` (B, N) and real image ``slots`` (B, I)."""

    def mean_of(heads: torch.Tensor) -> torch.Tensor:
        w = heads.to(maps.dtype)  # (B, N)
        return torch.einsum("bn,bni->bi", w, maps) / w.sum(1, keepdim=True).clamp_min(1)  # (B, I)

    ref = F.relu(_norm(mean_of(visual), norm) - _norm(mean_of(background), norm))  # (B, I)
    keep = slots
    if sink is not None:
        n = slots.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
        keep = keep & (maps.mean(1) <= sink / n)  # sinks: far above the uniform share
    ref = ref * keep
    return ref / ref.sum(-1, keepdim=True).clamp_min(TINY)


def focus_tokens(ref: torch.Tensor, slots: torch.Tensor, focus_std: float, min_focus: int) -> torch.Tensor:
    """``(B, I)`` bool: image tokens whose ratio to the mean of ``ref`` is above mean + focus_std * std,
    and at least the ``min_focus`` largest (capped by the sample's image length)."""
    n = slots.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
    ratio = ref / ((ref * slots).sum(1, keepdim=True) / n).clamp_min(TINY)  # (B, I)
    mean = (ratio * slots).sum(1, keepdim=True) / n
    std = (((ratio - mean) ** 2 * slots).sum(1, keepdim=True) / n).sqrt()
    above = ratio > mean + focus_std * std
    score = ref.masked_fill(~slots, float("-inf"))
    rank = score.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, I): 0 = largest
    return (above | (rank < min_focus)) & slots


def grid_cells(grids: list[list[tuple[int, int]]], row_end_tokens: tuple[int, ...], width: int) -> torch.Tensor:
    """``(B, I, 3)`` long ``(grid, row, col)`` of each sample's i-th image token; ``-1`` for tokens
    that are no grid cell (row-end tokens, padding slots). Layout as ``ModelAdapter.image_grid``."""
    cells = torch.full((len(grids), width, 3), -1, dtype=torch.long)
    for b, sample in enumerate(grids):
        start = 0
        for g, (rows, cols) in enumerate(sample):
            stride = cols + row_end_tokens[g % len(row_end_tokens)]  # tokens per grid row
            t = torch.arange(rows * stride)
            cell = torch.stack([torch.full_like(t, g), t // stride, t % stride], dim=1)  # (span, 3)
            cells[b, start : start + len(t)] = torch.where((t % stride < cols)[:, None], cell, -1)
            start += len(t)
    return cells


def dilate(mask: torch.Tensor, cells: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, I)`` bool: ``mask`` plus every cell within ``radius`` rows and columns of a masked
    cell of the same grid (``cells`` from ``grid_cells``)."""
    is_cell = cells[..., 0] >= 0  # (B, I)
    if radius <= 0 or not is_cell.any():
        return mask
    G, R, C = (int(cells[..., d].max()) + 1 for d in range(3))
    flat = torch.where(is_cell, (cells[..., 0] * R + cells[..., 1]) * C + cells[..., 2], G * R * C)  # (B, I)
    B = mask.shape[0]
    canvas = torch.zeros(B, G * R * C + 1, device=mask.device)  # one extra slot swallows non-cells
    canvas.scatter_(1, flat, (mask & is_cell).float())
    planes = canvas[:, :-1].reshape(B * G, 1, R, C)
    grown = F.max_pool2d(planes, 2 * radius + 1, stride=1, padding=radius).reshape(B, -1)  # (B, G*R*C)
    grown = torch.cat([grown, grown.new_zeros(B, 1)], dim=1)
    return mask | ((grown.gather(1, flat) > 0) & is_cell)


@dataclass
class VRGAFilter(HeadFilter):
    """VRGA: boost the question's focus region in visually engaged heads at every decode step."""

    name = "vrga"
    noop_params = {"gamma": 0.0}
    gamma: float = 0.5  # focus probabilities are multiplied by 1 + gamma
    visual_q: float = 0.05  # visual heads: EFR at or below this quantile ...
    ratio_q: float = 0.95  # ... and R at or above this quantile
    background_r: float = 0.01  # background heads: R below this ...
    early: list[int] | None = None  # ... in these blocks; None: 1 .. max(1, L // 4)
    norm: Literal["sum", "max"] = "sum"  # scaling of each mean map before the difference
    sink: float | None = 10.0  # sinks: mean attention above sink / n; None keeps them
    focus_std: float = 0.6  # focus: ratio to the mean above mean + focus_std * std
    min_focus: int = 10  # at least this many focus tokens
    radius: int = 2  # grid neighbours of focus tokens boosted too
    engaged_r: float = 0.6  # engaged head: R > engaged_r ...
    engaged_h: float = 0.2  # ... and R > engaged_h * H
    layers: list[int] | None = None  # blocks reweighted at decode; None: all

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        for param in ("visual_q", "ratio_q"):
            if not 0.0 <= getattr(self, param) <= 1.0:
                raise ValueError(f"{param}: {getattr(self, param)} is outside 0..1")
        if self.gamma < 0:
            raise ValueError(f"gamma: {self.gamma} must be >= 0")
        if self.min_focus < 0 or self.radius < 0:
            raise ValueError("min_focus, radius: must be >= 0")
        self._early = resolve_layers(self.early or list(range(1, max(1, L // 4) + 1)), L, "early")
        blocks = self.layers or list(range(1, L + 1))
        self._reweight = [] if self.gamma == 0 else resolve_layers(blocks, L, "layers")
        self._report: dict[str, list] = {}

    def active_layers(self) -> list[int]:
        # The last block too: its prefill call runs the analysis.
        return sorted(set(self._reweight) | {self.info.num_layers}) if self._reweight else []

    def needs(self) -> Needs:
        return Needs(prefill_rows=frozenset(range(1, self.info.num_layers)), image_grid=True)

    def conflicts(self, parts: Any) -> str | None:
        if sum(p.name == self.name for p in parts.components()) > 1:
            return "listed twice: the boosts would stack and one report hide the other; raise gamma instead"
        return None

    def analyse(self, row: AttentionRow, last: torch.Tensor) -> torch.Tensor:
        """The prefill analysis, in the last block with its row ``last`` (B, H, T): ``(B, T)``
        bool, the prompt keys to boost (focus tokens and their grid neighbours)."""
        index, slots = row.image_index, row.image_slots  # (B, I)
        rows = {**row.prefill_rows, row.layer: last}
        layers = sorted(rows)
        T = last.shape[-1]
        image_keys, valid = row.image_keys[:, :T], row.key_valid[:, :T]  # (B, T)
        ratios, entropies, maps = [], [], []
        for l in layers:
            probs = rows[l]  # (B, H, T)
            r, h = row_stats(probs, image_keys, valid)  # (B, H) each
            img = probs.gather(2, index[:, None, :].expand(-1, probs.shape[1], -1)) * slots[:, None, :]  # (B, H, I)
            ratios.append(r)
            entropies.append(h)
            maps.append(img / img.sum(-1, keepdim=True).clamp_min(TINY))
        ratio, entropy = torch.cat(ratios, 1), torch.cat(entropies, 1)  # (B, N), N = L * H
        maps = torch.cat(maps, 1)  # (B, N, I)
        H = ratios[0].shape[1]
        early = torch.tensor([l in self._early for l in layers], device=ratio.device).repeat_interleave(H)  # (N,)
        efr = entropy / ratio.clamp_min(TINY)
        visual, background = select_heads(ratio, efr, early, self.visual_q, self.ratio_q, self.background_r)
        ref = reference_map(maps, visual, background, slots, self.sink, self.norm)  # (B, I)
        focus = focus_tokens(ref, slots, self.focus_std, self.min_focus) & (ref.sum(1, keepdim=True) > 0)
        cells = grid_cells(row.image_grid, row.row_end_tokens, index.shape[1]).to(index.device)
        boost = dilate(focus, cells, self.radius) & slots  # (B, I)
        keys = torch.zeros(index.shape[0], T + 1, dtype=torch.bool, device=index.device)
        keys.scatter_(1, torch.where(slots, index, T), boost)  # padding slots go to the extra column
        self._report = {
            "visual_heads": [[[layers[n // H], n % H] for n in v.nonzero().flatten().tolist()] for v in visual.cpu()],
            "focus": [f.nonzero().flatten().tolist() for f in focus.cpu()],
        }
        return keys[:, :T]

    def probs(self, probs: torch.Tensor, row: AttentionRow) -> torch.Tensor:
        key = f"{self.name}:{id(self)}"
        if row.step == 0:
            if row.layer == self.info.num_layers:
                row.state[key] = self.analyse(row, probs)
            return probs
        if row.layer not in self._reweight:
            return probs
        K = probs.shape[-1]
        cached = row.state.get(key + ":step")
        if cached is None or cached[0] != K:  # once per step: every block of it has the same keys
            boost = F.pad(row.state[key], (0, K - row.state[key].shape[1]))  # (B, K): new tokens are no image
            image_col = row.image_keys.to(probs.dtype)[:, :, None]  # (B, K, 1)
            n_image = image_col.sum(1).clamp_min(1)  # (B, 1)
            share = row.key_valid.sum(1, keepdim=True).to(probs.dtype) / n_image  # (B, 1) n_valid / n_image
            cached = row.state[key + ":step"] = (K, self.gamma * boost.to(probs.dtype)[:, None, :], image_col, share)
        _, boost, image_col, share = cached  # boost: (B, 1, K) gamma on the focus keys, 0 elsewhere
        engaged = engaged_heads(probs, image_col, share, self.engaged_r, self.engaged_h)  # (B, H)
        p = torch.addcmul(probs, probs, engaged.to(probs.dtype)[:, :, None] * boost)  # (B, H, K): a * (1 + gamma)
        return p / p.sum(-1, keepdim=True)

    def report(self) -> dict[str, Any]:
        """Per sample: the visual heads ``[block, head]`` and the focus tokens (indices among
        the sample's image tokens) of the prefill analysis."""
        out, self._report = self._report, {}
        return out


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(VRGAFilter)
