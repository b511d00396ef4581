"""The Python API: a recipe on a model the caller loaded, the model left exactly as it was."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mllm_refine
from mllm_refine import Prediction, RecipeError, Refiner, Sample
from mllm_refine.adapter_lookup import adapter_for
from mllm_refine.engine import Decoder
from mllm_refine.recipes.compose import recipe_names
from mllm_refine.recipes.loader import load_recipe
from mllm_refine.refiner import override_texts, samples_from
from mllm_refine.testing.tiny_models import tiny_llava
from mllm_refine.testing.tiny_qwen import tiny_qwen2_vl
from tests.conftest import make_samples


def snapshot(model: torch.nn.Module, processor) -> dict:
    """Everything a refiner could leave behind on a model and its processor."""
    modules = list(model.modules())
    return {
        "attn": (model.config._attn_implementation, model.config.get_text_config()._attn_implementation),
        "config": model.config.to_dict(),
        "generation": model.generation_config.to_dict(),
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in modules],
        "attrs": [sorted(vars(m)) for m in modules],
        "training": [m.training for m in modules],
        "grad": [p.requires_grad for p in model.parameters()] + [p.grad is None for p in model.parameters()],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "padding_side": processor.tokenizer.padding_side,
    }


def assert_same(a: dict, b: dict) -> None:
    weights_a, weights_b = a.pop("weights"), b.pop("weights")
    assert a == b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def loaded(request):
    model, processor = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl}[request.param]()
    # transformers installs its own output-capturing hooks on a model's first forward: one plain
    # generate first, so the snapshots compare what the refiner leaves, not what transformers does.
    inputs = adapter_for(model, processor).prepare(make_samples(1))
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    processor.tokenizer.padding_side = "right"  # a caller's own choice, which the refiner must keep
    return model, processor


@pytest.mark.parametrize("recipe", sorted(recipe_names()))
def test_every_recipe_leaves_the_model_as_it_was(loaded, recipe):
    model, processor = loaded
    before = snapshot(model, processor)
    refiner = Refiner(model, processor, recipe, max_new_tokens=3)
    out = refiner.generate(samples=make_samples(2))
    assert [p.id for p in out] == ["s0", "s1"] and all(isinstance(p, Prediction) for p in out)
    assert_same(before, snapshot(model, processor))


def test_answers_equal_the_engine_and_plain_generate(loaded):
    model, processor = loaded
    samples = make_samples(4)
    refiner = Refiner(model, processor, "dualpd", max_new_tokens=4, batch_size=2)
    recipe = load_recipe("dualpd", ["decode.max_new_tokens=4"])
    engine = Decoder(model, processor, recipe.parts, recipe.decode).generate(samples)
    got = refiner.generate(samples=samples)
    assert [(p.text, p.tokens, p.choices) for p in got] == [(p.prediction, p.tokens, p.choices) for p in engine]

    vanilla = Refiner(model, processor, "vanilla", max_new_tokens=4)
    inputs = vanilla.decoder.adapter.prepare(samples)
    ref = model.generate(**inputs, do_sample=False, max_new_tokens=4, suppress_tokens=vanilla.decoder.adapter.image_token_ids)
    new = ref[:, inputs["input_ids"].shape[1] :].tolist()
    for tokens, p in zip(new, vanilla.generate(samples=samples)):
        assert tokens[: len(p.tokens)] == p.tokens


def test_processor_style_arguments_match_samples():
    model, processor = tiny_llava()
    samples = make_samples(2)
    refiner = Refiner(model, processor, "deco", max_new_tokens=3)
    one = refiner.generate(images=samples[0].images[0], text=samples[0].question)
    many = refiner.generate(images=[s.images for s in samples], text=[s.question for s in samples], ids=["s0", "s1"])
    direct = refiner.generate(samples=samples)
    assert one[0].text == direct[0].text and [p.text for p in many] == [p.text for p in direct]
    assert one[0].id == "0" and [p.id for p in many] == ["s0", "s1"]


def test_call_settings_apply_to_that_call_only():
    model, processor = tiny_llava()
    refiner = Refiner(model, processor, "vanilla", max_new_tokens=4)
    short = refiner.generate(samples=make_samples(1), max_new_tokens=1)
    assert len(short[0].tokens) <= 1
    assert refiner.decoder.config.max_new_tokens == 4 and len(refiner.generate(samples=make_samples(1))[0].tokens) == 4
    sampled = [refiner.generate(samples=make_samples(1), do_sample=True, seed=s)[0].tokens for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]


def test_overrides_read_like_the_command_line():
    assert override_texts({"max_new_tokens": 8, "head_filters__0__ratio": 0.2, "decode__stop": ["\n"]}) == [
        "decode.max_new_tokens=8",
        "head_filters.0.ratio=0.2",
        'decode.stop=["\\n"]',
    ]
    model, processor = tiny_llava()
    refiner = Refiner(model, processor, "dualpd", head_filters__0__ratio=0.25, max_new_tokens=2)
    assert refiner.recipe.parts.head_filters[0].ratio == 0.25 and refiner.recipe.decode.max_new_tokens == 2
    assert "head_filter:head_norm_filter" in refiner.parts and "dualpd" in repr(refiner)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m, p: Refiner(m, p, "dualpd", max_new_token=2), "max_new_token: unknown key"),
        (lambda m, p: Refiner(m, p, "dualpd", head_filters__0__ratio="high"), "head_filters[0].ratio: expected float"),
        (lambda m, p: Refiner(m, p, "no_such_recipe"), "no recipe named 'no_such_recipe'"),
        (lambda m, p: Refiner(m, p, "dualpd", layer_selector__layers=[99]), "layer_selector.layers"),
        (lambda m, p: Refiner(m, p, "vanilla").generate(samples=make_samples(1), max_new_tokens=0), "generate: max_new_tokens"),
        (lambda m, p: Refiner(m, p, "vanilla").generate(samples=make_samples(1), temprature=0.5), "generate.temprature: unknown"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(make, message):
    model, processor = tiny_llava()
    with pytest.raises(RecipeError) as e:
        make(model, processor)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"images: expected a list with one entry per text \(2\)"):
        samples_from(["a", "b"], images=[None])
    with pytest.raises(ValueError, match=r"sample '0': image '.*missing.png': file not found"):
        samples_from("a", images=str(tmp_path / "missing.png"))
    with pytest.raises(TypeError, match=r"sample '1': image: expected a PIL image or an image path, got int"):
        samples_from(["a", "b"], images=[None, [3]])
    with pytest.raises(ValueError, match="ids: expected one id per text"):
        samples_from(["a"], ids=["x", "y"])
    image = make_samples(1)[0].images[0]
    image.save(tmp_path / "x.png")
    (s,) = samples_from("what?", images=tmp_path / "x.png")
    assert isinstance(s, Sample) and s.images[0].size == image.size


def test_public_names_and_a_light_import():
    assert set(mllm_refine.__all__) <= set(dir(mllm_refine))
    for name in mllm_refine.__all__:
        assert getattr(mllm_refine, name) is not None
    code = "import sys, mllm_refine; print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'Decoder'"):
        mllm_refine.Decoder  # noqa: B018  (internal: reached through mllm_refine.engine only)


def test_a_loaded_recipe_takes_no_overrides():
    model, processor = tiny_llava()
    recipe = load_recipe("vanilla")
    assert Refiner(model, processor, recipe).recipe is recipe
    with pytest.raises(TypeError, match="not to a loaded Recipe"):
        Refiner(model, processor, recipe, max_new_tokens=2)


def _reference_logprob(model, processor, sample: Sample, continuation: list[int]) -> tuple[float, bool]:
    """Vanilla by hand: one forward over prompt + continuation; image placeholders masked out of
    the distribution, as the engine never emits them."""
    adapter = adapter_for(model, processor)
    inputs = adapter.prepare([sample])
    T = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([continuation])], 1)  # (1, T + N)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(**{**inputs, "input_ids": ids, "attention_mask": mask}).logits[0, T - 1 : -1].float()  # (N, V)
    logits[:, adapter.image_token_ids] = float("-inf")
    target = torch.tensor(continuation)
    logp = torch.log_softmax(logits, -1).gather(1, target[:, None]).sum().item()
    return logp, bool((logits.argmax(-1) == target).all())


def test_loglikelihood_of_vanilla_equals_a_hand_computation():
    model, processor = tiny_llava()
    refiner = Refiner(model, processor, "vanilla", batch_size=3)
    samples = make_samples(3)
    texts = [" red circle", "yes", " the square is blue"]
    got = refiner.loglikelihood(texts, samples=samples)
    for s, t, (logp, greedy) in zip(samples, texts, got):
        ref_logp, ref_greedy = _reference_logprob(model, processor, s, processor.tokenizer(t, add_special_tokens=False)["input_ids"])
        assert logp == pytest.approx(ref_logp, abs=1e-4) and greedy == ref_greedy
    one_by_one = Refiner(model, processor, "vanilla", batch_size=1).loglikelihood(texts, samples=samples)
    assert all(a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1] for a, b in zip(got, one_by_one))


@pytest.mark.parametrize("recipe", ["dualpd", "vcd_greedy", "vrga", "vicrop_rel"])
def test_loglikelihood_of_the_greedy_answer_is_greedy_under_the_refined_logits(recipe):
    """Forcing a recipe's own greedy answer: every token is its argmax, and the summed log-prob is
    that of the refined logits ``generate`` decoded from (read through ``observe``)."""
    model, processor = tiny_llava()
    refiner = Refiner(model, processor, recipe, max_new_tokens=4, do_sample=False)
    samples = make_samples(2)
    seen: list[torch.Tensor] = []
    answers = refiner.decoder.generate(samples, observe=lambda view, logits: seen.append(torch.log_softmax(logits.float(), -1)))
    forced = refiner.loglikelihood([processor.tokenizer.decode(p.tokens) for p in answers], samples=samples)
    for b, (p, (logp, greedy)) in enumerate(zip(answers, forced)):
        expected = sum(seen[t][b, tok].item() for t, tok in enumerate(p.tokens))
        assert greedy and logp == pytest.approx(expected, abs=1e-4)
