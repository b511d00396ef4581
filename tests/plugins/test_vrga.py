"""VRGA: the authors' analysis and reweighting (Ivine11/VRGA, models/modeling_qwen2_5_vl.py)
transcribed here and compared with the plugin on random rows; each step by hand; the old
readings one parameter away; then the recipes end to end on every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mllm_refine.components import AttentionRow, HeadFilter, ModelInfo, Needs
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.engine.parts import ConflictError
from mllm_refine.recipes import load_recipe
from mllm_refine.testing.choices import same_choices
from mllm_refine_plugins.vrga import (
    VRGAFilter,
    dilate,
    edge_candidates,
    edge_mask,
    focus_tokens,
    grid_cells,
    reference_map,
    sequence_neighbours,
)

ROOT = Path(__file__).resolve().parents[2]
INFO = ModelInfo(num_layers=8, num_heads=2, num_kv_heads=2, hidden_size=8, vocab_size=5, family="test")
STEPS = 6


# --- the authors' code, transcribed (one sample, loops, their index arithmetic) -------------


def authors_focus(rows, vs, ve, grid_w, first, min_select=10, top_ratio=0.6):
    """``Qwen2_5_VLTextModel.forward``'s prefill analysis of one sample: ``rows`` is a list over
    blocks of ``(H, T)`` rows of the analysed query; the region is ``vs:ve`` (``vs`` the
    ``<|vision_start|>`` position). Background heads: R < 0.01 and ``i < first`` (1-based).
    Returns the focus positions (absolute)."""
    eps = 1e-12
    maps, efrs, ratios = [], [], []
    for layer in rows:
        for head in range(layer.shape[0]):
            att = layer[head].float()
            att = att / (att.sum() + eps)
            image_att = att[vs:ve]
            s = image_att.sum().item()
            if s > 0:
                p = image_att / (s + eps)
                entropy = -(p * (p + eps).log()).sum().item()
            else:
                entropy = 0.0
            ratio = image_att.mean().item() / (att.mean().item() + eps)
            efrs.append(entropy / (ratio + eps))
            ratios.append(ratio)
            maps.append(image_att)
    t1, t2 = np.percentile(efrs, 5), np.percentile(ratios, 95)
    selected, background = [], []
    for i, (m, e, r) in enumerate(zip(maps, efrs, ratios), start=1):
        if e <= t1 and r >= t2:
            selected.append(m)
        if r < 0.01 and i < first:
            background.append(m)
    if not selected:
        selected = [m for m, r in zip(maps, ratios) if r >= t2]
    need = torch.stack(selected).mean(0, keepdim=True)  # (1, V)
    if background:
        other = torch.stack(background).mean(0, keepdim=True)
        need = torch.clamp(need / need.sum() - other / other.sum(), min=0)
        need = need / need.sum()
    V = ve - vs
    t_max = int(V * 0.2)
    grid_h = V // grid_w
    flat = torch.arange(grid_h * grid_w).view(grid_h, grid_w)
    mask_flat = torch.cat([flat[:2, :2].flatten(), flat[0, 2:].flatten(), flat[2:, 0].flatten()])[:t_max]
    masked = need.clone()
    masked[:, mask_flat] = 0.0
    mean = masked.sum(dim=1) / ((V - mask_flat.numel()) + eps)
    ratio = need / (mean.unsqueeze(1) + eps)
    ratio[:, mask_flat] = -1e9
    valid = ratio[0][~mask_flat]  # their line: ~ of an index tensor
    threshold = torch.mean(valid) + torch.std(valid) * top_ratio
    idx = torch.where(ratio[0] > threshold)[0]
    if len(idx) < min_select:
        idx = torch.topk(ratio[0], k=min_select).indices
    return (idx + vs).tolist()


def authors_keep(focus, vs, ve, k=2):
    """``Qwen2_5_VLAttention.forward``: the region positions boosted for focus ``focus``."""
    keep = set()
    for t in focus:
        idx = t - vs
        if 3 <= idx < ve - vs:
            keep.update(range(max(0, idx - k), min(ve - vs, idx + k + 1)))
    return keep


def authors_step(row, vs, ve, keep, multiply=1.5, r_img=0.6):
    """``Qwen2_5_VLAttention.forward`` at a decode step (q == 1) of one sample, ``row`` (H, K)."""
    out = row.clone()
    for head in range(out.shape[0]):
        att = out[head] / out[head].sum()
        image_att = att[vs:ve]
        entropy = -(image_att * (image_att + 1e-12).log()).sum().item()
        ratio = image_att.mean().item() / att.mean().item()
        if ratio > r_img and ratio > 0.2 * entropy:
            out[head, [vs + i for i in sorted(keep)]] *= multiply
    return out / out.sum(-1, keepdim=True)


# --- random prefill rows of a padded batch ----------------------------------------------------

L, H, PREFIX, SUFFIX = 4, 4, 5, 6


def make_batch(grids, seed=0):
    """Rows of blocks 1..L for samples with one ``(rows, cols)`` grid each: ``PREFIX`` text
    tokens, the ``<|vision_start|>`` marker (attention 0: the plugin's region has no marker), the
    image tokens, ``SUFFIX`` tokens; the analysed query is the third-last; left padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = [PREFIX + 1 + r * c + SUFFIX for r, c in grids]
    T = max(lengths)
    rows = torch.zeros(L, len(grids), H, T)
    valid = torch.zeros(len(grids), T, dtype=torch.bool)
    image = torch.zeros(len(grids), T, dtype=torch.bool)
    per_sample = []
    for b, ((r, c), n) in enumerate(zip(grids, lengths)):
        pad, q = T - n, n - 3
        valid[b, pad:] = True
        vs = PREFIX
        image[b, pad + vs + 1 : pad + vs + 1 + r * c] = True
        scores = torch.randn(L, H, n, generator=g) * 2
        scores[:, :, vs + 1 : vs + 1 + r * c] *= 0.4  # smooth image maps ...
        scores[:, :, vs + 1 : vs + 1 + r * c] += torch.randn(L, H, 1, generator=g) * 4  # ... heads differ in R
        # Low-R heads, flat image maps in block 1 (the reference map keeps enough tokens above 0
        # for the largest ones to have no ties), less flat above (a background pair or not matters).
        spread = torch.tensor([0.2] + [0.6] * (L - 1))[:, None, None]
        scores[:, :2, vs + 1 : vs + 1 + r * c] = torch.randn(L, 2, r * c, generator=g) * spread - 9
        scores[:, :, vs] = float("-inf")  # the marker
        scores[:, :, q + 1 :] = float("-inf")  # causal
        probs = torch.softmax(scores, -1)
        rows[:, b, :, pad:] = probs
        per_sample.append((probs, vs, vs + 1 + r * c, c))
    return rows, valid, image, per_sample


def plugin_row(rows, valid, image, grids, back=1):
    counts = image.sum(1)
    order = torch.argsort((~image).to(torch.int8), dim=1, stable=True)
    width = int(counts.max())
    return AttentionRow(
        layer=L,
        step=0,
        key_valid=valid,
        image_keys=image,
        image_index=order[:, :width],
        image_slots=torch.arange(width)[None] < counts[:, None],
        image_grid=[[g] for g in grids],
        question_rows={(l, back): rows[l - 1] for l in range(1, L + 1)},
        padded=True,
    )


GRIDS = [(3, 4), (5, 5), (12, 12), (4, 20)]
FIRST = 6  # the transcription's ``i < first``: background heads among the first 5 of 16 pairs
# Fewer than the code's 10 largest: relu leaves ties at 0 that topk breaks in no fixed order.
MIN_FOCUS = 3


def run_plugin(grids, seed, **params):
    rows, valid, image, per_sample = make_batch(grids, seed)
    f = VRGAFilter(**{"background_share": (FIRST - 1) / (L * H), "min_focus": MIN_FOCUS, **params})
    f.setup(ModelInfo(num_layers=L, num_heads=H, num_kv_heads=H, hidden_size=8, vocab_size=5, family="test"))
    row = plugin_row(rows, valid, image, grids)
    keys = f.analyse(row, rows[-1])  # (B, T)
    report = f.report(row.state)
    boosted = []
    for b in range(len(grids)):
        index = row.image_index[b, : int(image[b].sum())]
        boosted.append({i for i, k in enumerate(index.tolist()) if keys[b, k]})
    return boosted, report["focus"], per_sample


SEEDS = [3, 4, 6]  # rows whose reference maps keep at least MIN_FOCUS tokens above 0


@pytest.mark.parametrize("seed", SEEDS)
def test_analysis_matches_the_authors_code(seed):
    boosted, focus, per_sample = run_plugin(GRIDS, seed)
    for b, (probs, vs, ve, cols) in enumerate(per_sample):
        code_focus = authors_focus(list(probs), vs, ve, cols, FIRST, min_select=MIN_FOCUS)
        assert sorted(focus[b]) == sorted(t - vs - 1 for t in code_focus)  # region position -> image token
        assert boosted[b] == {i - 1 for i in authors_keep(code_focus, vs, ve)}
    # The regimes of the code's threshold: the 12 x 12 grid gets every unmasked token, the
    # 3 x 4 grid its MIN_FOCUS largest.
    assert len(focus[2]) == 144 - 23 and len(focus[0]) == MIN_FOCUS


@pytest.mark.parametrize(
    "old",
    [
        dict(maps="renorm"),
        dict(background_share=None, early=[1]),
        dict(focus_rule="paper"),
        dict(neighbours="grid"),
        dict(skip=0, lead=0),
    ],
)
def test_each_old_reading_departs_from_the_code(old):
    """Each parameter's other reading changes the boosted tokens on these rows: the fidelity
    test above would fail with it."""
    new = [run_plugin(GRIDS, s)[0] for s in SEEDS]
    other = [run_plugin(GRIDS, s, **old)[0] for s in SEEDS]
    assert new != other


def test_decode_step_matches_the_authors_code():
    torch.manual_seed(0)
    B, Hd, K, vs, n = 2, 8, 40, 10, 16
    scores = torch.randn(B, Hd, K) * 2
    scores[:, :4, vs : vs + n] += torch.linspace(0, 5, 4)[:, None]  # heads more and less engaged
    probs = torch.softmax(scores, -1)
    image = torch.zeros(B, K, dtype=torch.bool)
    image[:, vs : vs + n] = True
    keep = [{3, 4, 5, 6, 7}, {0, 1, 2, 14, 15}]  # image tokens
    boost = torch.zeros(B, K - 2, dtype=torch.bool)  # the prompt: the last two keys are new tokens
    for b, k in enumerate(keep):
        boost[b, [vs + i for i in k]] = True
    f = VRGAFilter()
    f.setup(INFO)
    row = AttentionRow(layer=2, step=1, key_valid=torch.ones(B, K, dtype=torch.bool), image_keys=image)
    row.state[f"vrga:{id(f)}"] = boost
    out = f.probs(probs, row)
    for b in range(B):  # the transcription's region: the image tokens (no marker)
        torch.testing.assert_close(out[b], authors_step(probs[b], vs, vs + n, keep[b]), atol=1e-6, rtol=1e-5)


# --- each step by hand ------------------------------------------------------------------------


def test_reference_map_by_hand():
    maps = torch.tensor(
        [[[0.4, 0.4, 0.1, 0.1, 0.0], [0.6, 0.2, 0.1, 0.1, 0.0], [0.1, 0.1, 0.4, 0.4, 0.0]]]
    )  # (B=1, N=3 heads, I=5); slot 4 pads
    visual = torch.tensor([[True, True, False]])
    background = torch.tensor([[False, False, True]])
    # mean visual [.5, .3, .1, .1] - background [.1, .1, .4, .4] -> relu [.4, .2, 0, 0] -> /0.6.
    ref = reference_map(maps, visual, background, norm="sum")
    torch.testing.assert_close(ref, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0, 0.0]]))
    # "max": visual [1, .6, .2, .2] - background [.25, .25, 1, 1] -> [.75, .35, 0, 0] -> /1.1.
    ref = reference_map(maps, visual, background, norm="max")
    torch.testing.assert_close(ref, torch.tensor([[0.75 / 1.1, 0.35 / 1.1, 0.0, 0.0, 0.0]]))
    # Raw maps (unnormalised) give the same map after each mean is scaled to sum 1.
    ref = reference_map(maps * 0.1, visual, background, norm="sum")
    torch.testing.assert_close(ref, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0, 0.0]]))
    none = reference_map(maps, visual, torch.zeros_like(background), norm="sum")
    torch.testing.assert_close(none, torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0]]))  # no background heads


def test_edge_mask_by_hand():
    # 3 x 4 grid, lead 1: region grid of (12 + 1) // 4 = 3 rows; candidates 2 x 2 corner
    # [0, 1, 4, 5], first row [2, 3], first column [8].
    assert edge_candidates(3, 4, 1) == [0, 1, 4, 5, 2, 3, 8]
    # int(0.2 * 13) = 2 picks: region 0 (the marker) and 1 (image token 0); mirrors 11 - k.
    masked, stats, valid = edge_mask([[(3, 4)]], [12], 12, lead=1, cap=0.2)
    assert masked[0].nonzero().flatten().tolist() == [0]
    assert stats[0].tolist() == [11, 10] and valid.all()
    # 5 x 5, lead 1: int(0.2 * 26) = 5 picks [0, 1, 5, 6, 2] -> image tokens 0, 4, 5, 1, i.e.
    # cells (0, 0), (0, 4), (1, 0), (0, 1); mirrors 24 - k.
    masked, stats, _ = edge_mask([[(5, 5)]], [25], 25, lead=1, cap=0.2)
    assert masked[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert stats[0].tolist() == [24, 23, 19, 18, 22]
    # Lead 0: the mask on the image's own cells: (0, 0), (0, 1) of 3 x 4.
    masked, _, _ = edge_mask([[(3, 4)]], [12], 12, lead=0, cap=0.2)
    assert masked[0].nonzero().flatten().tolist() == [0, 1]
    # A mirror below the image is the lead token: -1.
    _, stats, _ = edge_mask([[(2, 2)]], [4], 4, lead=1, cap=1.0)
    assert stats[0].tolist() == [3, 2, 1, 0]  # picks 0, 1, 2, 3 of the region grid (5 // 2 = 2 rows)


def test_focus_tokens_by_hand():
    ref = torch.tensor([[0.1, 0.4, 0.2, 0.2, 0.1]])  # (B=1, I=5)
    slots = torch.ones(1, 5, dtype=torch.bool)
    masked = torch.tensor([[True, False, False, False, False]])
    # Unmasked mean 0.225: scores [-1e9, 1.778, 0.889, 0.889, 0.444].

    def code(stats, min_focus=1):
        s = torch.tensor([stats])
        return focus_tokens(ref, slots, masked, 0.6, min_focus, "code", s, torch.ones_like(s, dtype=torch.bool))[0]

    # Picks 4, 3: mean 0.667, std 0.314 -> threshold 0.855: tokens 1, 2, 3.
    assert code([4, 3]).nonzero().flatten().tolist() == [1, 2, 3]
    # One masked of two: mean -5e8, std 7.07e8 -> threshold -7.6e7: every unmasked token.
    assert code([4, -1]).nonzero().flatten().tolist() == [1, 2, 3, 4]
    # One masked of five: mean -2e8, std 4.47e8 -> threshold +6.8e7: none, so the largest.
    assert code([4, 3, 2, 1, 0]).nonzero().flatten().tolist() == [1]
    # A single pick: NaN std, nothing passes: the min_focus largest.
    assert code([4], min_focus=2).nonzero().flatten().tolist() == [1, 2]
    # Paper: the unmasked scores, mean 1, std 0.559 -> threshold 1.336: token 1.
    paper = focus_tokens(ref, slots, masked, 0.6, 1, "paper")
    assert paper[0].nonzero().flatten().tolist() == [1]
    assert focus_tokens(ref, slots, masked, 0.6, 9, "paper").tolist() == slots.tolist()  # capped by the image


def test_sequence_and_grid_neighbours_by_hand():
    centres = torch.zeros(1, 10, dtype=torch.bool)
    centres[0, [0, 7]] = True
    slots = torch.arange(10)[None] < 9
    assert sequence_neighbours(centres, slots, 2)[0].nonzero().flatten().tolist() == [0, 1, 2, 5, 6, 7, 8]
    # Grids. Sample 0: one 3 x 4 grid. Sample 1: a 2 x 2 grid, then a 2 x 3 grid with one row-end
    # token after each row (LLaVA-NeXT's newline): tokens 4 5 6 [7] / 8 9 10 [11].
    cells = grid_cells([[(3, 4)], [(2, 2), (2, 3)]], (0, 1), 12)
    assert cells[0, 5].tolist() == [0, 1, 1] and cells[0, 11].tolist() == [0, 2, 3]
    newline = [-1, -1, -1]
    assert cells[1, 4:].tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 2], newline, [1, 1, 0], [1, 1, 1], [1, 1, 2], newline]
    focus = torch.zeros(2, 12, dtype=torch.bool)
    focus[0, 0] = True
    focus[1, 4] = True
    one = dilate(focus, cells, 1)
    assert one[0].nonzero().flatten().tolist() == [0, 1, 4, 5]  # rows 0-1, cols 0-1
    assert one[1].nonzero().flatten().tolist() == [4, 5, 8, 9]  # not grid 0, not the newlines


def test_reweighting_by_hand():
    f = VRGAFilter(gamma=0.5)
    f.setup(INFO)
    probs = torch.tensor([[[0.05, 0.5, 0.3, 0.05, 0.1], [0.3, 0.1, 0.1, 0.1, 0.4]]])  # (B=1, H=2, K=5)
    image = torch.tensor([[False, True, True, True, False]])
    row = AttentionRow(layer=2, step=1, key_valid=torch.ones(1, 5, dtype=torch.bool), image_keys=image)
    row.state[f"vrga:{id(f)}"] = torch.tensor([[False, False, True, False]])  # prompt of 4 keys: boost key 2
    # Head 0: R = (0.85 / 3) / (1 / 5) = 1.42 > 0.6 and > 0.2 * H (raw H = 0.86): engaged.
    # Head 1: R = (0.3 / 3) / (1 / 5) = 0.5: not engaged.
    out = f.probs(probs, row)
    boosted = probs[0, 0] * torch.tensor([1.0, 1.0, 1.5, 1.0, 1.0])
    torch.testing.assert_close(out[0, 0], boosted / boosted.sum())
    torch.testing.assert_close(out[0, 1], probs[0, 1])
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 2))
    assert f.probs(probs, AttentionRow(layer=2, step=0, key_valid=row.key_valid, image_keys=image)) is probs


def test_settings_needs_and_conflicts():
    f = VRGAFilter(layers=[2, 3])
    f.setup(INFO)
    assert f.active_layers() == [2, 3, 8]  # the last block runs the prefill analysis
    # The code's row: one before the question's last token, in every block.
    assert f.needs() == Needs(question_rows=frozenset((l, 1) for l in range(1, 9)), image_grid=True)
    question = VRGAFilter(row="question")
    question.setup(INFO)
    assert question.needs().question_rows == frozenset((l, 0) for l in range(1, 9))
    prompt = VRGAFilter(row="prompt", background_share=None)
    prompt.setup(INFO)
    assert prompt.needs() == Needs(prefill_rows=frozenset(range(1, 8)), image_grid=True)
    assert prompt._early == [1, 2]  # 1 .. max(1, 8 // 4)
    off = VRGAFilter(gamma=0.0)
    off.setup(INFO)
    assert off.active_layers() == []
    with pytest.raises(ValueError, match="ratio_q: 1.5 is outside 0..1"):
        VRGAFilter(ratio_q=1.5).setup(INFO)
    with pytest.raises(ValueError, match="row: 'last'"):
        VRGAFilter(row="last").setup(INFO)
    with pytest.raises(ValueError, match="needs sinks 'edge'"):
        VRGAFilter(sinks="mean").setup(INFO)
    with pytest.raises(ConflictError, match="head_filter 'vrga': listed twice"):
        Parts(head_filters=[VRGAFilter(), VRGAFilter()]).check()


class GridRecorder(HeadFilter):
    name = "grid_recorder"

    def __init__(self):
        self.grids = []

    def active_layers(self) -> list[int]:
        return [1]

    def needs(self) -> Needs:
        return Needs(image_grid=True)

    def probs(self, probs, row):
        self.grids.append(row.image_grid)
        return probs


def test_filters_get_each_samples_grid(tiny, samples):
    _, model, processor = tiny
    rec = GridRecorder()
    decoder = Decoder(model, processor, Parts(head_filters=[rec]), DecodeConfig(max_new_tokens=1))
    decoder.generate(samples)
    assert rec.grids == [decoder.adapter.image_grid(decoder.adapter.prepare(samples))]


@pytest.mark.parametrize("recipe", ["vrga", "dualpd_vrga"])
def test_recipes_end_to_end(tiny, samples, recipe):
    _, model, processor = tiny
    parts = load_recipe(ROOT / "recipes" / f"{recipe}.yaml").parts
    decoder = Decoder(model, processor, parts, DecodeConfig(max_new_tokens=STEPS))
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert all(same_choices(b.choices, s.choices) for b, s in zip(batched, single, strict=True))
    assert all(p.choices["vrga.focus"] and p.choices["vrga.visual_heads"] and p.choices["vrga.map"] for p in batched)
    vanilla = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=STEPS)).generate(samples)
    assert [p.tokens for p in batched] != [p.tokens for p in vanilla]


def test_old_readings_run_end_to_end(tiny, samples):
    """The earlier reading, every switch at once, still runs batched as alone."""
    _, model, processor = tiny
    old = VRGAFilter(
        row="prompt", background_share=None, maps="renorm", sinks="mean", focus_rule="paper",
        neighbours="grid", skip=0, engaged_entropy="renorm",
    )
    decoder = Decoder(model, processor, Parts(head_filters=[old]), DecodeConfig(max_new_tokens=STEPS))
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
