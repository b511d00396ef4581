"""The embedded default model: assembled offline from the shipped assets and the registry
packages, loaded by the ordinary transformers path, answering easy-VQA through the engine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from mllm_refine.data.easy_vqa import EasyVQA
from mllm_refine.embedded import NAME, default_model_path
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.metrics.exact_match import normalize

pytest.importorskip("gguf")


def _stratified(per_type: int) -> list:
    """The first ``per_type`` test questions of each answer type."""
    out = []
    for kind in ("yes_no", "colour", "shape"):
        data = EasyVQA("test", question_types=[kind], limit=per_type)
        out += [data[i] for i in range(len(data))]
    return out


@pytest.fixture(scope="module")
def embedded():
    from mllm_refine.models import load_model

    model, processor = load_model(NAME)
    return model, processor


def test_checkpoint_folder_loads_offline_with_auto_classes():
    path = default_model_path()
    code = (
        "import sys; from transformers import AutoModelForImageTextToText, AutoProcessor;"
        "m = AutoModelForImageTextToText.from_pretrained(sys.argv[1]); p = AutoProcessor.from_pretrained(sys.argv[1]);"
        "print(type(m).__name__, p.tokenizer.padding_side, m.config.text_config.num_hidden_layers)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["LlavaForConditionalGeneration", "left", "30"]


def test_engine_vanilla_equals_generate_and_answers_well(embedded):
    model, processor = embedded
    samples = _stratified(16)
    decoder = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=6, batch_size=16))
    got = [p for i in range(0, len(samples), 16) for p in decoder.generate(samples[i : i + 16])]
    inputs = decoder.adapter.prepare(samples[:16])
    ref = model.generate(**inputs, do_sample=False, max_new_tokens=6, suppress_tokens=decoder.adapter.image_token_ids)
    eos = decoder._eos_ids(decoder.generation_config())
    for r, g in zip(ref[:, inputs["input_ids"].shape[1] :].tolist(), got[:16]):
        n = next((i for i, t in enumerate(r) if t in eos), len(r))
        assert g.tokens == r[:n]
    correct = {k: 0 for k in ("yes_no", "colour", "shape")}
    for s, p in zip(samples, got):
        correct[s.meta["type"]] += normalize(p.prediction) == s.answers[0]
    # Measured on the whole test split: see docs/embedded.md. 16 questions per type here.
    assert all(c >= 12 for c in correct.values()), correct


def test_a_blank_image_takes_the_answers_away(embedded):
    model, processor = embedded
    samples = [s for s in _stratified(16) if s.meta["type"] != "yes_no"]
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    for s in samples:
        s.images = [white]
    decoder = Decoder(model, processor, Parts(), DecodeConfig(max_new_tokens=6, batch_size=16))
    preds = [p.prediction for p in decoder.generate(samples)]
    correct = sum(normalize(p) == s.answers[0] for p, s in zip(preds, samples))
    assert correct <= 12, (correct, preds)  # 32 open questions over 8 colours and 3 shapes
