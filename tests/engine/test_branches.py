"""Image-free branch inputs: the image markup cut out by hand, equal to the prompt rebuilt without
images on every family, and a lockstep image-free branch equal to a plain text-only forward."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from mllm_refine.adapter_lookup import adapter_for
from mllm_refine.adapters.image_free import image_free, strip_images
from mllm_refine.components import LogitCombiner, Needs
from mllm_refine.components.branch import Branch
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.testing.tiny_models import tiny_llava, tiny_qwen2_vl
from tests.conftest import make_samples

IMAGE, START, END, PAD = 9, 7, 8, 0


class StubAdapter:
    image_markup_attrs = ("vision_start_token_id", "vision_end_token_id")

    def __init__(self) -> None:
        self.model = SimpleNamespace(config=SimpleNamespace(vision_start_token_id=START, vision_end_token_id=END))
        self.tokenizer = SimpleNamespace(pad_token_id=PAD)

    def image_keys(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == IMAGE


def test_strip_images_by_hand():
    ids = torch.tensor([[PAD, PAD, 1, START, IMAGE, IMAGE, END, 2], [3, 4, START, IMAGE, IMAGE, END, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    kinds = torch.tensor([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]])  # a per-token tensor rides along
    inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": kinds, "pixel_values": torch.ones(4, 3)}
    out = strip_images(inputs, StubAdapter())
    # Row 0 keeps 1, 2; row 1 keeps 3, 4, 5, 6: left padded to 4.
    assert out["input_ids"].tolist() == [[PAD, PAD, 1, 2], [3, 4, 5, 6]]
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert out["mm_token_type_ids"].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert "pixel_values" not in out


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_stripped_prompts_equal_prompts_built_without_images(name):
    from mllm_refine.testing.tiny_models import TINY_MODELS

    model, processor = TINY_MODELS[name]()
    adapter = adapter_for(model, processor)
    samples = make_samples(4)
    inputs = adapter.prepare(samples)
    stripped = image_free(inputs, samples, adapter, "strip")
    rebuilt = image_free(inputs, samples, adapter, "template")
    assert set(stripped) == set(rebuilt)  # no image tensor is left, every per-token tensor is kept
    for key in rebuilt:
        assert torch.equal(stripped[key], rebuilt[key]), key
    with pytest.raises(ValueError, match="prompt"):
        image_free(inputs, samples, adapter, "none")


@dataclass
class FreeEcho(LogitCombiner):
    """Keeps each step's image-free branch logits; decodes the main logits unchanged."""

    name = "free_echo"
    uses_layer = False
    prompt: str = "strip"

    def needs(self) -> Needs:
        return Needs(branches=frozenset({Branch("free", self.inputs)}))

    def inputs(self, inputs, samples, adapter):
        return adapter.without_images(inputs, samples, self.prompt)

    def combine(self, view, layer):
        self.seen = getattr(self, "seen", []) + [view.branch_logits("free").clone()]
        return view.logits


@pytest.mark.parametrize("factory", [tiny_llava, tiny_qwen2_vl])
def test_image_free_branch_is_a_text_only_forward_in_lockstep(factory):
    model, processor = factory()
    echo = FreeEcho()
    decoder = Decoder(model, processor, Parts(logit_combiner=echo), DecodeConfig(max_new_tokens=3))
    samples = make_samples(3)
    preds = decoder.generate(samples)  # batch of 3, left padded
    adapter = decoder.adapter
    for b, (sample, pred) in enumerate(zip(samples, preds)):
        prompt = adapter.prepare([dataclasses.replace(sample, images=[])])["input_ids"]  # (1, T) no padding
        for k in range(min(len(echo.seen), len(pred.tokens) + 1)):
            ids = torch.cat([prompt, torch.tensor([pred.tokens[:k]], dtype=torch.long)], dim=1)
            with torch.no_grad():
                plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]  # (V,)
            torch.testing.assert_close(echo.seen[k][b], plain, atol=1e-4, rtol=1e-4)
