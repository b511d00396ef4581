"""The look loss of the Qwen embedded model's build: the answer rows it records equal eager
attention's, its targets and its value match hand computations, and it trains the blocks it reads."""

from __future__ import annotations

import math

import pytest
import torch

from mllm_refine.embedded import look_loss as look
from mllm_refine.embedded import scenes_training as st
from mllm_refine.testing.tiny_qwen import tiny_qwen2_5_vl


def test_answer_positions_are_the_rows_before_each_answer():
    targets = torch.tensor([[-100, 7, 8, 2], [-100, -100, 9, 2]])  # 3 and 2 answer tokens with EOS
    assert look.answer_positions(targets, 10).tolist() == [6, 7]


def test_box_shares_split_the_box_area_over_cells():
    # a 4 x 4 image on a 2 x 2 grid: cells are 2 px squares
    t = look.box_shares([[0, 0, 2, 2], [1, 0, 3, 2], None], 2, (4, 4))  # (3, 4)
    assert t[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert t[1].tolist() == [0.5, 0.5, 0.0, 0.0]  # half of each top cell
    assert t[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_look_loss_by_hand():
    # B=2, H=2, T=4; image tokens at positions 1 and 2 (I=2); sample 1 has no target
    row = torch.tensor(
        [
            [[0.1, 0.6, 0.2, 0.1], [0.3, 0.2, 0.2, 0.3]],
            [[0.25, 0.25, 0.25, 0.25], [0.5, 0.1, 0.1, 0.3]],
        ]
    )  # (B, H, T)
    image = torch.tensor([[False, True, True, False]] * 2)
    targets = torch.tensor([[0.75, 0.25], [0.0, 0.0]])
    # sample 0: head mean over the image = (0.4, 0.2) -> renormalised (2/3, 1/3)
    want = -(0.75 * math.log(2 / 3) + 0.25 * math.log(1 / 3))
    got = look.look_loss({3: row, 5: row}, image, targets)  # two blocks, same rows: the same mean
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert look.look_loss({}, image, targets).item() == 0.0
    assert look.look_loss({3: row}, image, torch.zeros(2, 2)).item() == 0.0


def test_recorded_rows_equal_eager_attention_and_train_only_the_blocks_up_to_them():
    model, processor = tiny_qwen2_5_vl()
    model.train()
    qs = st.Questions.of("train", 4, seed=0)
    batch = st.make_batch(processor, qs, [0, 1, 2, 3])
    ids = batch["input_ids"]  # (B, L)
    positions = look.answer_positions(batch["targets"], ids.shape[1])  # (B,)
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    text = model.model.language_model
    before = text.config._attn_implementation
    with look.recording(model, [2], positions, batch["attention_mask"]) as rec:
        model(**inputs)
    assert text.config._attn_implementation == before
    assert set(rec.rows) == {2}
    text.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            eager = model(**inputs, output_attentions=True).attentions[1]  # block 2: (B, H, L, L)
    finally:
        text.config._attn_implementation = before
    want = eager[torch.arange(len(positions)), :, positions]  # (B, H, L) the answer rows
    torch.testing.assert_close(rec.rows[2], want, atol=1e-6, rtol=1e-5)

    cells = look.box_shares(st.target_boxes(qs, [0, 1, 2, 3]), 4, (224, 224))  # the tiny model's 4 x 4 grid
    assert (cells.sum(-1) > 0).any()
    loss = look.look_loss(rec.rows, ids == model.config.image_token_id, cells)
    model.zero_grad()
    loss.backward()
    q1, q3 = (text.layers[i].self_attn.q_proj.weight.grad for i in (1, 2))
    assert q1 is not None and q1.abs().sum() > 0  # block 2 reads its own queries
    assert q3 is None or q3.abs().sum() == 0  # block 3 comes after: the loss does not reach it
