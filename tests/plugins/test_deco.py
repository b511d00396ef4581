"""DeCo parts against hand computations on small tensors, then its recipes end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mllm_refine.components import ModelInfo
from mllm_refine.engine import ConflictError, DecodeConfig, Decoder, Parts
from mllm_refine.recipes import RecipeError, load_recipe
from mllm_refine.testing.tiny_models import tiny_llava
from mllm_refine_plugins.deco import (
    STATE_KEY,
    DecoAnchorSelector,
    DecoModulateCombiner,
    anchor,
    candidate_set,
    default_anchor_layers,
)
from mllm_refine_plugins.dualpd import HellingerShiftSelector

ROOT = Path(__file__).resolve().parents[2]
INFO = ModelInfo(num_layers=8, num_heads=4, num_kv_heads=4, hidden_size=8, vocab_size=4, family="test")
RECIPES = ["deco", "deco_selector_dualpd_heads"]


def test_default_anchor_layers_scale_20_to_28_of_32():
    assert default_anchor_layers(32) == list(range(20, 29))
    assert default_anchor_layers(6) == [4, 5]  # 3.75 -> 4, 5.25 -> 5
    assert default_anchor_layers(28) == list(range(18, 26))  # 17.5 -> 18, 24.5 -> 25
    assert default_anchor_layers(40) == list(range(25, 36))


def test_candidate_set_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.95, 0.0, 0.0]])
    logits = probs.clamp_min(1e-9).log()  # (B=2, V=4)
    ids, keep = candidate_set(logits, top_k=3, top_p=0.9)
    # Row 0: cumulative 0.5, 0.8, 0.95 -> the third reaches 0.9 and stays (as top-p does).
    # Row 1: the top token alone holds 0.95 >= 0.9: it stays alone.
    assert ids.tolist()[0] == [0, 1, 2] and keep.tolist()[0] == [True, True, True]
    assert ids.tolist()[1][:2] == [1, 0] and keep.tolist()[1] == [True, False, False]
    ids, keep = candidate_set(logits, top_k=3, top_p=0.9, cut="within")
    assert keep.tolist() == [[True, True, False], [True, False, False]]  # 0.95 > 0.9 is cut
    ids, keep = candidate_set(logits, top_k=2, top_p=1.0)
    assert ids.tolist() == [[0, 1], [1, 0]] and keep.all()
    _, keep = candidate_set(logits, top_k=3, top_p=1e-9)  # the smallest cut still keeps the top token
    assert keep.tolist() == [[True, False, False], [True, False, False]]


def test_candidate_set_keeps_the_runner_up_at_an_ambiguous_step():
    """p1 < 0.9 <= p1 + p2: the authors' cut keeps both tokens; 'within' keeps the top one alone."""
    logits = torch.tensor([[0.6, 0.35, 0.05]]).log()  # (B=1, V=3)
    _, keep = candidate_set(logits, top_k=20, top_p=0.9)
    assert keep.tolist() == [[True, True, False]]
    _, keep = candidate_set(logits, top_k=20, top_p=0.9, cut="within")
    assert keep.tolist() == [[True, False, False]]


def authors_deco(final: torch.Tensor, lens: torch.Tensor, alpha: float, top_p: float, top_k: int):
    """The authors' DeCo step for one sequence (zjunlp/Deco, ``transformers/generation/utils.py``,
    ``deco_greedy_search`` / the per-sequence loop of ``deco_beam_search``), written out here.
    ``final`` (V,) final logits, ``lens`` (A, V) the anchor layers' normed logit lens."""
    probs = final.softmax(-1)
    top, ids = probs.topk(top_k)
    cumulative = top.cumsum(-1)
    cutoff = min(int(torch.searchsorted(cumulative, torch.tensor(top_p), right=False)) + 1, top_k)
    candidates = ids[:cutoff]
    layer_probs = lens.softmax(-1)[:, candidates]  # (A, c)
    flat = int(layer_probs.argmax())
    p_max = layer_probs.max().item()
    anchor_index = flat // layer_probs.shape[1]
    out = final + alpha * p_max * lens[anchor_index]
    remove = torch.ones_like(out, dtype=torch.bool)
    remove[candidates] = False
    return out.masked_fill(remove, float("-inf")), anchor_index


@pytest.mark.parametrize("seed", range(4))
def test_selector_and_combiner_match_the_authors_step(seed):
    torch.manual_seed(seed)
    B, V, layers = 6, 40, [3, 5, 6]
    # Sharp and flat rows: candidate sets from one token to all top_k.
    final = torch.randn(B, V) * torch.tensor([0.3, 1.0, 2.0, 3.0, 5.0, 8.0])[:, None]
    lens = {l: torch.randn(B, V) * 2 for l in layers}
    s = DecoAnchorSelector(layers=layers, top_k=10, top_p=0.9)
    c = DecoModulateCombiner(alpha=0.6)
    s.setup(INFO)
    c.setup(INFO)
    view = FakeView(final, lens)
    chosen = s.select(view)
    out = c.combine(view, chosen)
    for b in range(B):
        want, a = authors_deco(final[b], torch.stack([lens[l][b] for l in layers]), 0.6, 0.9, 10)
        assert chosen[b].item() == layers[a]
        torch.testing.assert_close(out[b], want)


def test_deco_can_change_the_answer_at_an_ambiguous_step():
    """Top token 0.6, runner-up 0.35: an anchor sure of the runner-up flips the greedy choice."""
    s = DecoAnchorSelector(layers=[3], top_k=20, top_p=0.9)
    c = DecoModulateCombiner(alpha=0.6)
    s.setup(INFO)
    c.setup(INFO)
    final = torch.tensor([[0.6, 0.35, 0.04, 0.01]]).log()  # (B=1, V=4)
    z3 = torch.tensor([[0.0, 5.0, 0.0, 0.0]])  # layer 3 puts e^5 / (e^5 + 3) ~ 0.98 on token 1
    view = FakeView(final, {3: z3})
    out = c.combine(view, s.select(view))
    # token 0: log 0.6 = -0.51; token 1: log 0.35 + 0.6 * 0.98 * 5 = -1.05 + 2.94
    assert out.argmax(-1).tolist() == [1]
    s_within = DecoAnchorSelector(layers=[3], top_k=20, top_p=0.9, cut="within")
    s_within.setup(INFO)
    view = FakeView(final, {3: z3})
    assert c.combine(view, s_within.select(view)).argmax(-1).tolist() == [0]  # token 1 is no candidate


def test_anchor_picks_layer_and_candidate_by_hand():
    lens = torch.tensor(
        [
            [[0.1, 0.2, 0.6, 0.1], [0.05, 0.7, 0.05, 0.2]],  # layer 0 sure of token 2 (no candidate)
            [[0.4, 0.4, 0.1, 0.1], [0.4, 0.1, 0.4, 0.1]],  # a tie at 0.4 across layers
        ]
    )  # (B=2, A=2, V=4)
    ids = torch.tensor([[0, 1], [0, 1]])  # (B, k)
    keep = torch.tensor([[True, True], [True, True]])
    a, p_max = anchor(lens, ids, keep)
    # Sample 0: candidates 0, 1 -> best 0.7 at layer index 1 (token 2's 0.6 is not a candidate).
    # Sample 1: 0.4 at (layer 0, token 0), (layer 0, token 1), (layer 1, token 0): the lower layer wins.
    assert a.tolist() == [1, 0]
    torch.testing.assert_close(p_max, torch.tensor([0.7, 0.4]))
    a, p_max = anchor(lens, ids, torch.tensor([[True, False], [True, True]]))
    assert a.tolist()[0] == 0 and p_max[0].item() == pytest.approx(0.1)  # token 0 alone: 0.1 beats 0.05


class FakeView:
    """The parts of StepView DeCo reads: final logits, per-layer lens, step and scratch state."""

    def __init__(self, logits: torch.Tensor, lens: dict[int, torch.Tensor], placeholders: tuple[int, ...] = ()):
        self.logits, self._lens, self.step, self.state = logits, lens, 0, {}
        self.image_token_ids = tuple(placeholders)

    def lens(self, layer: int, final_norm: bool = True) -> torch.Tensor:
        return self._lens[layer]

    def lenses(self, layers: list[int], final_norm: bool = True) -> torch.Tensor:
        return torch.stack([self._lens[l] for l in layers], 1)  # (B, N, V)


def test_selector_and_combiner_by_hand():
    s = DecoAnchorSelector(layers=[3, 5], top_k=2, top_p=1.0)
    c = DecoModulateCombiner(alpha=0.5)
    s.setup(INFO)
    c.setup(INFO)
    final = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]])  # (B=2, V=4)
    z3 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    z5 = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    view = FakeView(final, {3: z3, 5: z5})
    layer = s.select(view)
    # Candidates: sample 0 {0, 1}, sample 1 {2, 3}.
    # Sample 0: layer 3 gives 1/4 to each; layer 5 gives token 1 3/6 = 0.5 -> anchor 5, p_max 0.5.
    # Sample 1: layer 3 gives tokens 2, 3 1/(3 + e^4) each; layer 5 gives 1/4 -> anchor 5, p_max 0.25.
    assert layer.tolist() == [5, 5]
    torch.testing.assert_close(view.state[STATE_KEY]["p_max"], torch.tensor([0.5, 0.25]))
    out = c.combine(view, layer)
    inf = float("-inf")
    expected = torch.tensor(
        [
            [2.0 + 0.5 * 0.5 * 0.0, 1.0 + 0.5 * 0.5 * math.log(3.0), inf, inf],
            [inf, inf, 3.0, 1.0],  # z5 is 0 there: the candidates keep z_N
        ]
    )
    torch.testing.assert_close(out, expected)


def test_image_placeholders_are_no_candidates():
    s = DecoAnchorSelector(layers=[3], top_k=1, top_p=1.0)
    s.setup(INFO)
    view = FakeView(torch.tensor([[5.0, 1.0, 0.0, 0.0]]), {3: torch.zeros(1, 4)}, placeholders=(0,))
    s.select(view)
    assert view.state[STATE_KEY]["candidates"].tolist() == [[False, True, False, False]]


def test_combiner_needs_the_anchor_and_parts_check_says_so():
    parts = Parts(layer_selector=HellingerShiftSelector(), logit_combiner=DecoModulateCombiner())
    with pytest.raises(ConflictError, match="deco_modulate.*use layer_selector 'deco_anchor'"):
        parts.check()
    Parts(layer_selector=DecoAnchorSelector(), logit_combiner=DecoModulateCombiner()).check()


def test_recipe_with_another_selector_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: {path: tiny-llava}\nlayer_selector: hellinger_shift\nlogit_combiner: deco_modulate\n")
    with pytest.raises(RecipeError, match="r.yaml: logit_combiner 'deco_modulate': it reads the anchor's p_max"):
        load_recipe(p)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="layers: the anchor must precede the final block 8"):
        DecoAnchorSelector(layers=[4, 8]).setup(INFO)
    with pytest.raises(ValueError, match="top_p"):
        DecoAnchorSelector(top_p=0.0).setup(INFO)
    with pytest.raises(ValueError, match="top_k"):
        DecoAnchorSelector(top_k=0).setup(INFO)
    with pytest.raises(ValueError, match="cut"):
        DecoAnchorSelector(cut="below").setup(INFO)
    s = DecoAnchorSelector()
    s.setup(INFO)
    assert s.candidates() == [5, 6, 7] and s.needs().hidden == frozenset({5, 6, 7})


def _decoder(model, processor, name: str, *overrides: str) -> Decoder:
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", ["decode.max_new_tokens=5", *overrides])
    return Decoder(model, processor, recipe.parts, recipe.decode)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_batch_of_4_equals_4_of_1(tiny, samples, name):
    family, model, processor = tiny
    decoder = _decoder(model, processor, name)
    batched = decoder.generate(samples)
    single = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in batched] == [p.tokens for p in single]
    assert [p.choices for p in batched] == [p.choices for p in single]
    anchors = decoder.parts.layer_selector.candidates()
    for p in batched:  # one anchor layer per sample and generated token
        assert len(p.choices["layer"]) == max(len(p.tokens), 1)
        assert set(p.choices["layer"]) <= set(anchors)
        assert p.fallbacks == 0


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_changes_some_answer(llava, samples, name):
    model, processor = llava
    vanilla = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=5)).generate(samples)
    refined = _decoder(model, processor, name).generate(samples)
    assert [p.tokens for p in vanilla] != [p.tokens for p in refined]


def test_sampling_never_leaves_the_candidates(tiny, samples):
    """With a single candidate, sampling has one token to draw: vanilla greedy's."""
    family, model, processor = tiny
    vanilla = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=5)).generate(samples)
    sampled = _decoder(model, processor, "deco", "decode.do_sample=true", "layer_selector.top_k=1").generate(samples)
    assert [p.tokens for p in sampled] == [p.tokens for p in vanilla]
    assert all(p.fallbacks == 0 for p in sampled)
    wide = _decoder(model, processor, "deco", "decode.do_sample=true", "decode.seed=1")
    assert [p.tokens for p in wide.generate(samples)] == [p.tokens for p in wide.generate(samples)]
