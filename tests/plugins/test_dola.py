"""DoLa parts against hand computations, token-for-token parity with Hugging Face's DoLa
(transformers 4.52, recorded by scripts/make_dola_fixture.py), and its recipes end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor

from mllm_refine.components import ModelInfo
from mllm_refine.data.sample import Sample
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.functional import relative_top, sample_seed
from mllm_refine.recipes import load_recipe
from mllm_refine.testing.tiny_models import LLAVA_TEMPLATE, tiny_llava
from mllm_refine.testing.tiny_tokenizer import tiny_tokenizer
from mllm_refine_plugins.dola import DolaJsdSelector, dola_buckets, layer_divergence
from mllm_refine_plugins.layer_contrast import DolaContrastCombiner

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "dola"
INFO = ModelInfo(num_layers=8, num_heads=4, num_kv_heads=4, hidden_size=8, vocab_size=4, family="test")
RECIPES = ["dola", "dola_hellinger"]


def test_buckets_by_hand():
    assert dola_buckets(32, "low", tied_embeddings=False) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert dola_buckets(32, "low", tied_embeddings=True) == [2, 4, 6, 8, 10, 12, 14]
    assert dola_buckets(32, "high", tied_embeddings=True) == [16, 18, 20, 22, 24, 26, 28, 30]
    assert dola_buckets(48, "low", tied_embeddings=False) == list(range(0, 20, 2))  # over 40 blocks
    assert dola_buckets(48, "high", tied_embeddings=False) == list(range(28, 48, 2))
    assert dola_buckets(4, "low", tied_embeddings=True) == [2]  # start == L // 2
    assert dola_buckets(2, "low", tied_embeddings=True) == [1]
    assert dola_buckets(6, "high", tied_embeddings=False) == [3, 5]


def test_divergence_by_hand():
    p, q = [0.5, 0.5], [0.9, 0.1]
    m = [0.7, 0.3]
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b))  # noqa: E731
    final = torch.tensor([p]).log()  # (B=1, V=2)
    early = torch.tensor([[q, p]]).log()  # (B=1, C=2, V=2): a different exit, then an identical one
    dola = layer_divergence(final, early, "dola")
    js = layer_divergence(final, early, "js")
    # dola: the KLs run from the mixture and are averaged over the V = 2 tokens.
    torch.testing.assert_close(dola, torch.tensor([[0.5 * (kl(m, p) + kl(m, q)) / 2, 0.0]]))
    torch.testing.assert_close(js, torch.tensor([[0.5 * (kl(p, m) + kl(q, m)), 0.0]]))


class FakeView:
    """The parts of StepView DoLa reads: final logits and each layer's lens."""

    def __init__(self, logits: torch.Tensor, lens: dict[int, torch.Tensor]):
        self.logits, self._lens = logits, lens

    def lens(self, layer: int, final_norm: bool = True) -> torch.Tensor:
        return self._lens[layer]

    def lenses(self, layers: list[int], final_norm: bool = True) -> torch.Tensor:
        return torch.stack([self._lens[l] for l in layers], 1)  # (B, N, V)


def test_selector_chooses_per_sample():
    s = DolaJsdSelector(layers=[2, 4])
    s.setup(INFO)
    final = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])  # (B=2, V=3)
    flat = torch.zeros(2, 3)
    # Layer 2 agrees with sample 0 and is flat for sample 1; layer 4 the other way round.
    view = FakeView(final, {2: torch.stack([final[0], flat[1]]), 4: torch.stack([flat[0], final[1]])})
    d = s.divergences(view)  # (B, C)
    assert d[0, 0].abs() < 1e-6 and d[1, 1].abs() < 1e-6 and d[0, 1] > 0.01 and d[1, 0] > 0.01
    assert s.select(view).tolist() == [4, 2]  # each sample its own layer, not one for the batch


def test_selector_settings():
    s = DolaJsdSelector(layers="low")
    s.setup(INFO)
    assert s.candidates() == [0, 2] and s.needs().hidden == frozenset({0, 2})
    tied = dataclasses.replace(INFO, tied_embeddings=True)
    s.setup(tied)
    assert s.candidates() == [2]
    s = DolaJsdSelector(layers="low", tied_embeddings=False)
    s.setup(tied)
    assert s.candidates() == [0, 2]
    with pytest.raises(ValueError, match="layers: 8 is the final block itself"):
        DolaJsdSelector(layers=[2, 8]).setup(INFO)


def test_model_reports_tied_embeddings():
    model, processor = tiny_llava()
    assert not Decoder(model, processor).adapter.info().tied_embeddings
    model.lm_head.weight = model.get_input_embeddings().weight
    assert Decoder(model, processor).adapter.info().tied_embeddings
    s = DolaJsdSelector(layers="low")
    s.setup(Decoder(model, processor).adapter.info())
    assert s.candidates() == [2]  # 6 blocks, tied: 2 .. below 3


def test_contrast_by_hand():
    c = DolaContrastCombiner(alpha=0.1)
    c.setup(INFO)
    p = torch.tensor([0.6, 0.3, 0.08, 0.02])
    q = torch.tensor([0.2, 0.6, 0.1, 0.1])
    final = torch.stack([p.log() + 1.0, p.log()])  # (B=2, V=4); a shift leaves log_softmax alone
    view = SimpleNamespace(logits=final, lens_at=lambda layer, final_norm, fill=True: torch.stack([q.log(), q.log()]))
    out = c.combine(view, torch.tensor([3, -1]))
    # Plausible: p >= 0.1 * 0.6 = 0.06 -> tokens 0, 1, 2 (0.02 is cut).
    expected = torch.tensor([math.log(0.6 / 0.2), math.log(0.3 / 0.6), math.log(0.08 / 0.1), float("-inf")])
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], final[1])  # no layer: the final logits
    assert relative_top(final.log_softmax(-1), 0.0).all()


# --- parity with Hugging Face transformers 4.52 generate(dola_layers=...) -----------------------


@pytest.fixture(scope="module")
def hf_fixture():
    meta = json.loads((FIXTURE / "cases.json").read_text())
    model, info = LlavaForConditionalGeneration.from_pretrained(FIXTURE, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    image = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=image, tokenizer=tiny_tokenizer(["<image>"]), patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)  # fmt: skip
    samples = [Sample(id=f"p{i}", question=q, images=[]) for i, q in enumerate(meta["questions"])]
    return meta, model.eval(), processor, samples


def _case_id(case: dict) -> str:
    layers = case["dola_layers"] if isinstance(case["dola_layers"], str) else "list"
    return f"{layers}-tiedflag{int(case['tie_word_embeddings_flag'])}-{'sample' if case['do_sample'] else 'greedy'}"


CASES = json.loads((FIXTURE / "cases.json").read_text())["cases"]


def test_fixture_prompts_match_our_tokenizer(hf_fixture):
    meta, model, processor, samples = hf_fixture
    decoder = Decoder(model, processor)
    assert [decoder.adapter.prepare([s])["input_ids"][0].tolist() for s in samples] == meta["input_ids"]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_tokens_equal_hugging_face_dola(hf_fixture, case):
    meta, model, processor, samples = hf_fixture
    # HF reads LLaVA's top-level tie_word_embeddings flag; the fixture's weights are untied.
    selector = DolaJsdSelector(layers=case["dola_layers"], tied_embeddings=case["tie_word_embeddings_flag"])
    config = DecodeConfig(max_new_tokens=meta["max_new_tokens"], repetition_penalty=case["repetition_penalty"],
                          do_sample=case["do_sample"])  # fmt: skip
    decoder = Decoder(model, processor, Parts(layer_selector=selector, logit_combiner=DolaContrastCombiner()), config)
    assert [sample_seed(0, s.id) for s in samples] == case["seeds"]  # the seeds HF sampled with
    ours = [decoder.generate([s])[0] for s in samples]
    assert [p.tokens for p in ours] == case["tokens"]
    for p in ours:
        assert set(p.choices["layer"]) <= set(selector.candidates())


# --- recipes end to end ------------------------------------------------------------------------


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
    candidates = set(decoder.parts.layer_selector.candidates())
    for p in batched:  # one layer per sample and generated token
        assert len(p.choices["layer"]) == max(len(p.tokens), 1)
        assert set(p.choices["layer"]) <= candidates
        assert p.fallbacks == 0


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_changes_some_answer(llava, samples, name):
    model, processor = llava
    vanilla = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=5, repetition_penalty=1.2))
    refined = _decoder(model, processor, name)
    assert [p.tokens for p in vanilla.generate(samples)] != [p.tokens for p in refined.generate(samples)]
