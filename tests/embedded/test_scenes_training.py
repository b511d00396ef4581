"""The Qwen embedded model's build steps: answer targets, per-cell labels, and a stopped stage
resuming from its checkpoint to the same weights as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mllm_refine.data import scenes
from mllm_refine.embedded import scenes_training as st
from mllm_refine.testing.tiny_qwen import tiny_qwen2_5_vl


def test_batch_targets_are_the_answer_and_eos_at_the_end():
    model, processor = tiny_qwen2_5_vl()
    qs = st.Questions.of("train", 4, seed=0)
    rows = [0, 1, 2, 3]
    batch = st.make_batch(processor, qs, rows)
    tok = processor.tokenizer
    for b, r in enumerate(rows):
        want = qs.data.rows[r][1].answer + tok.eos_token
        kept = [t for t in batch["targets"][b].tolist() if t != -100]
        assert tok.decode(kept).replace(" ", "") == want  # the tiny tokenizer is word-level
        assert batch["input_ids"][b, -len(kept) :].tolist() == kept  # left padding: the answer ends every row
    logits, feats = st.answer_logits(model, batch)
    assert logits.shape[:2] == (4, st.KEEP)
    assert feats.shape[0] == batch["image_grid_thw"].prod(-1).sum() // 4  # merged 2 x 2


def test_cell_targets_name_colour_and_shape_or_background():
    scene = scenes.make_scene("train", 0)
    colour, shape = st.cell_targets([scene], 8)  # (64,) each
    labels = scenes.cell_labels(scene, 8).reshape(-1)
    for cell, k in enumerate(labels.tolist()):
        if k < 0:
            assert colour[cell] == len(st.COLOURS) and shape[cell] == len(st.SHAPES)
        else:
            assert st.COLOURS[colour[cell]] == scene.objects[k].colour and st.SHAPES[shape[cell]] == scene.objects[k].shape


class _Stop(Exception):
    pass


def _train(tmp_path, stop_at: int | None) -> torch.Tensor:
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(0)

    def loss_of(step: int) -> torch.Tensor:
        if step == stop_at:
            raise _Stop
        x = torch.randn(8, 3, generator=gen)  # drawn from the checkpointed generator
        return ((net(x).squeeze(1) - x.sum(1)) ** 2).mean()

    ckpt = st.Checkpoints(tmp_path, every=2)
    st.run_stage("s", net, {"net": net}, [{"params": list(net.parameters()), "lr": 0.1}], 6, loss_of, gen, ckpt, lambda m: None)
    return net.weight.detach().clone()


def test_a_stopped_stage_resumes_to_the_same_weights(tmp_path):
    whole = _train(tmp_path / "whole", None)
    with pytest.raises(_Stop):
        _train(tmp_path / "stopped", 4)  # checkpoints at steps 2 and 4, then stops
    resumed = _train(tmp_path / "stopped", None)
    assert torch.equal(resumed, whole)
    assert not torch.equal(_train(tmp_path / "fresh", None), torch.zeros(1, 3))
