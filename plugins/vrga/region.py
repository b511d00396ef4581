"""VRGA's region of the question: the reference map over a sample's image tokens, the tokens
left out of it (attention sinks), the focus tokens and the neighbours boosted with them."""

from __future__ import annotations

from mllm_refine.lazy import F, torch
from mllm_refine_plugins.vrga.stats import TINY

MASKED = -1e9  # the score of a masked token in the focus rule, as the authors' code sets it


def _norm(x: torch.Tensor, how: str) -> torch.Tensor:
    scale = x.sum(-1, keepdim=True) if how == "sum" else x.amax(-1, keepdim=True)
    return x / scale.clamp_min(TINY)


def reference_map(maps: torch.Tensor, visual: torch.Tensor, background: torch.Tensor, norm: str) -> torch.Tensor:
    """``A_ref`` (B, I): ``relu(norm(mean visual map) - norm(mean background map))``, scaled to
    sum 1, from per-head image maps ``maps`` (B, N, I) (zero on padding slots) and head masks
    ``visual``/``background`` (B, N). Without background heads the second term is 0."""

    def mean_of(heads: torch.Tensor) -> torch.Tensor:
        w = heads.to(maps.dtype)  # (B, N)
        return torch.einsum("bn,bni->bi", w, maps) / w.sum(1, keepdim=True).clamp_min(1)  # (B, I)

    ref = F.relu(_norm(mean_of(visual), norm) - _norm(mean_of(background), norm))  # (B, I)
    return ref / ref.sum(-1, keepdim=True).clamp_min(TINY)


def edge_candidates(rows: int, cols: int, lead: int) -> list[int]:
    """The authors' edge mask in order, as positions of their image region: the top-left 2 x 2
    cells, the rest of the first row, the rest of the first column, of a ``cols``-wide grid laid
    over the region from its first position. Their region starts ``lead`` tokens before the
    image (Qwen2.5-VL's ``<|vision_start|>``), so the grid is shifted by ``lead`` against the
    image's own cells; it has ``(rows * cols + lead) // cols`` rows."""
    h = (rows * cols + lead) // cols
    corner = [r * cols + c for r in range(min(2, h)) for c in range(min(2, cols))]
    return corner + list(range(2, cols)) + [r * cols for r in range(2, h)]


def edge_mask(
    grids: list[list[tuple[int, int]]], counts: list[int], width: int, lead: int, cap: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edge mask of each sample's first grid: ``(masked, stats, stats_valid)``.

    ``masked`` (B, I) bool: image tokens among the first ``int(cap * (n + lead))`` edge
    candidates (``n`` image tokens). ``stats`` (B, C) long: the image token at the mirror
    ``n + lead - 1 - k`` of each masked region position ``k``, the positions whose scores the
    authors' focus rule averages (``~`` on their index tensor is ``-k - 1``, which counts from the
    region's end); -1 marks a lead token, which scores as masked. ``stats_valid`` (B, C) bool."""
    masked = torch.zeros(len(counts), width, dtype=torch.bool)
    picks = []
    for b, (sample, n) in enumerate(zip(grids, counts)):
        rows, cols = sample[0] if sample else (0, 1)
        k = torch.tensor(edge_candidates(rows, cols, lead)[: int(cap * (n + lead))], dtype=torch.long)
        image = k - lead  # region position -> image token
        image = image[(image >= 0) & (image < n)]
        masked[b, image] = True
        picks.append((n - 1 - k).clamp_min(-1))  # mirrors; below the image: a lead token
    C = max((len(p) for p in picks), default=0)
    stats = torch.full((len(counts), C), -1, dtype=torch.long)
    valid = torch.zeros(len(counts), C, dtype=torch.bool)
    for b, p in enumerate(picks):
        stats[b, : len(p)], valid[b, : len(p)] = p, True
    return masked, stats, valid


def _mean_std(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample std (Bessel, as ``torch.std``) of ``values`` (B, C) where ``valid``; NaN
    std for fewer than 2 values."""
    v = valid.to(values.dtype)
    m = v.sum(1, keepdim=True)  # (B, 1)
    mean = (values * v).sum(1, keepdim=True) / m
    var = (((values - mean) ** 2) * v).sum(1, keepdim=True) / (m - 1)
    return mean, var.sqrt()


def focus_tokens(
    ref: torch.Tensor,
    slots: torch.Tensor,
    masked: torch.Tensor,
    focus_std: float,
    min_focus: int,
    rule: str = "code",
    stats: torch.Tensor | None = None,
    stats_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, I)`` bool focus tokens of ``ref`` (B, I) over the real ``slots`` (B, I).

    The score of a token is ``ref`` over the mean of ``ref`` on the unmasked tokens, ``MASKED``
    on ``masked`` ones. Focus: scores above ``mean + focus_std * std``; when fewer than
    ``min_focus``, the ``min_focus`` largest scores instead (capped by the image length).
    ``rule``: where mean and std come from. ``paper``: the unmasked tokens. ``code``: the scores
    at ``stats`` (B, C) where ``stats_valid`` (from ``edge_mask``; -1 scores as masked), as the
    authors' code computes them; wherever those hold masked tokens, the ``MASKED`` values
    dominate: few of them push the threshold far above every score (the ``min_focus`` largest
    win), more than about a quarter far below (every unmasked token is a focus token)."""
    keep = slots & ~masked  # (B, I)
    score = ref.double()
    mean_ref = (score * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
    score = (score / mean_ref.clamp_min(TINY)).masked_fill(masked, MASKED)  # (B, I)
    if rule == "code":
        assert stats is not None and stats_valid is not None  # edge_mask's, under sinks="edge"
        vals = torch.where(stats >= 0, score.gather(1, stats.clamp_min(0)), MASKED)  # (B, C)
        mean, std = _mean_std(vals, stats_valid)
    else:
        mean, std = _mean_std(score, keep)
    above = (score > mean + focus_std * std) & slots  # NaN thresholds pass nothing
    ranked = score.masked_fill(~slots, float("-inf"))
    rank = ranked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, I): 0 = largest
    top = (rank < min_focus) & slots
    few = above.sum(1, keepdim=True) < min_focus
    return torch.where(few, top, above)


def sequence_neighbours(centres: torch.Tensor, slots: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, I)`` bool: every image token within ``radius`` positions of a centre, along the
    sample's image-token sequence."""
    if radius <= 0 or centres.shape[1] == 0:
        return centres & slots
    grown = F.max_pool1d(centres.float()[:, None, :], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    return (grown > 0) & slots


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
