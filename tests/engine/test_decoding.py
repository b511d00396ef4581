"""Stop strings, max tokens, repetition penalty and seeded sampling."""

from __future__ import annotations

import pytest

from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.testing.tiny_models import tiny_llava


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def test_max_new_tokens_and_stop_strings(llava, samples):
    model, processor = llava
    full = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8)).generate(samples[:1])[0]
    assert len(full.tokens) == 8
    words = full.prediction.split()
    stop = words[3]
    stopped = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8, stop=[stop])).generate(samples[:1])[0]
    assert stopped.prediction == full.prediction.split(stop)[0].strip()
    assert len(stopped.tokens) < 8


def test_repetition_penalty_matches_generate(llava, samples):
    model, processor = llava
    decoder = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8, repetition_penalty=1.5))
    inputs = decoder.adapter.prepare(samples)
    ref = model.generate(**inputs, do_sample=False, max_new_tokens=8, repetition_penalty=1.5,
                         suppress_tokens=decoder.adapter.image_token_ids)  # fmt: skip
    ref_new = ref[:, inputs["input_ids"].shape[1] :].tolist()
    assert [p.tokens for p in decoder.generate(samples)] == ref_new
    plain = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8)).generate(samples)
    assert [p.tokens for p in plain] != ref_new


def test_sampling_is_seeded(llava, samples):
    model, processor = llava
    cfg = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20, top_p=0.95)
    a = Decoder(model, processor, Parts(), DecodeConfig(seed=1, **cfg)).generate(samples)
    b = Decoder(model, processor, Parts(), DecodeConfig(seed=1, **cfg)).generate(samples)
    c = Decoder(model, processor, Parts(), DecodeConfig(seed=2, **cfg)).generate(samples)
    greedy = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=8)).generate(samples)
    assert [p.tokens for p in a] == [p.tokens for p in b]
    assert [p.tokens for p in a] != [p.tokens for p in c]
    assert [p.tokens for p in a] != [p.tokens for p in greedy]


def test_sampled_batch_equals_single_samples(llava, samples):
    cfg = DecodeConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20, seed=3)
    decoder = Decoder(*llava, Parts(), cfg)
    batched = [p.tokens for p in decoder.generate(samples)]
    single = [decoder.generate([s])[0].tokens for s in samples]
    assert batched == single  # a sample's draws never depend on its batch
    reordered = [p.tokens for p in decoder.generate(samples[::-1])][::-1]
    assert reordered == batched


def test_a_request_reports_only_its_own_choices(llava, samples):
    from mllm_refine_plugins.dualpd import HeadNormFilter

    model, processor = llava
    f = HeadNormFilter(ratio=0.5, gamma=0.5)
    decoder = Decoder(model, processor, Parts(head_filters=[f]), DecodeConfig(max_new_tokens=2))
    decoder.loglikelihood(samples[:3], ["a b"] * 3)  # a request whose state nobody reads
    first = decoder.generate(samples[:2])
    (alone,) = decoder.generate(samples[1:2])
    assert [len(p.choices["head_norm_filter.heads"]) for p in first] == [len(alone.choices["head_norm_filter.heads"])] * 2
    assert alone.choices == first[1].choices  # the same sample, in a new request of another size
    # What setup derived, and nothing a request wrote: the part holds no per-request state.
    assert vars(f).keys() <= {*(p.name for p in f.params()), "info", "count", "_layers"}


def test_a_step_never_reads_the_device_back(llava, samples, monkeypatch):
    """The processor's own work in a step (placeholders, the non-finite guard, the chosen layer)
    is tensor ops: nothing is read back to the host until the batch ends, when ``chosen()`` copies
    every step's layer at once. The parts here are pure tensor ops too."""
    import dataclasses

    import torch

    from mllm_refine.components import LayerSelector, LogitCombiner
    from mllm_refine.engine.processor import RefineProcessor

    @dataclasses.dataclass
    class Second(LayerSelector):
        name = "second"

        def candidates(self) -> list[int]:
            return [2]

        def select(self, view):
            return torch.full((view.logits.shape[0],), 2, dtype=torch.long, device=view.logits.device)

    @dataclasses.dataclass
    class Final(LogitCombiner):
        name = "final"

        def combine(self, view, layer):
            return view.logits

    model, processor = llava
    decoder = Decoder(model, processor, Parts(layer_selector=Second(), logit_combiner=Final()), DecodeConfig(max_new_tokens=3))
    expected = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=3)).generate(samples[:2])
    inside = [False]
    step = RefineProcessor.__call__

    def watched(self, *args):
        inside[0] = True
        try:
            return step(self, *args)
        finally:
            inside[0] = False

    def refuse(name):
        original = getattr(torch.Tensor, name)

        def guard(t, *a, **k):
            assert not inside[0], f"a decode step read a tensor back to the host (Tensor.{name})"
            return original(t, *a, **k)

        return guard

    monkeypatch.setattr(RefineProcessor, "__call__", watched)
    for name in ("__bool__", "item", "tolist", "cpu", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    got = decoder.generate(samples[:2])
    assert [p.tokens for p in got] == [p.tokens for p in expected]  # the final logits, unchanged
    assert [p.choices["layer"] for p in got] == [[2] * len(p.tokens) for p in got]
    assert [p.fallbacks for p in got] == [0, 0]
