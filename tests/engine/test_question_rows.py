"""Needs.question_rows: each sample's last question token is located from its own prompt, and
its prefill rows equal eager attention's rows there, in a padded batch as alone."""

from __future__ import annotations

import torch

from mllm_refine.components import HeadFilter, Needs
from mllm_refine.engine import DecodeConfig, Decoder, Parts


class QuestionRows(HeadFilter):
    """Keeps the question rows it is handed at prefill (``back`` 0 and 1 in blocks 1 and 3)."""

    name = "question_rows"

    def __init__(self):
        self.rows, self.last = {}, None

    def active_layers(self) -> list[int]:
        return [3]

    def needs(self) -> Needs:
        return Needs(question_rows=frozenset({(1, 0), (1, 1), (3, 0)}))

    def probs(self, probs, row):
        if row.step == 0:
            self.rows, self.last = dict(row.question_rows), row.question_last
        return probs


def test_question_last_is_the_questions_last_token(tiny, samples):
    _, model, processor = tiny
    decoder = Decoder(model, processor)
    inputs = decoder.adapter.prepare(samples)
    last = decoder.adapter.question_last(samples, inputs["input_ids"])  # (B,)
    tok = decoder.adapter.tokenizer
    for b, s in enumerate(samples):
        ids = inputs["input_ids"][b]
        # The question's tail decodes up to its last token; the tokens after it are the same
        # template tail for every sample.
        assert s.question.endswith(tok.decode(ids[last[b]]).strip())
        assert ids[last[b] + 1 :].tolist() == inputs["input_ids"][0][last[0] + 1 :].tolist()
    # "how many": the row before the last question token is "how".
    assert tok.decode(inputs["input_ids"][2][last[2] - 1]).strip() == "how"


def test_question_rows_match_eager_rows_batched_and_alone(tiny, samples):
    _, model, processor = tiny
    rec = QuestionRows()
    decoder = Decoder(model, processor, Parts(head_filters=[rec]), DecodeConfig(max_new_tokens=1))
    decoder.generate(samples)
    batched, last = rec.rows, rec.last
    assert sorted(batched) == [(1, 0), (1, 1), (3, 0)]
    inputs = decoder.adapter.prepare(samples)
    text = model.config.get_text_config()
    text._attn_implementation = "eager"
    try:
        out = model(**inputs, output_attentions=True)
    finally:
        text._attn_implementation = "mllm_refine"
    for (layer, back), rows in batched.items():
        for b in range(len(samples)):
            eager = out.attentions[layer - 1][b, :, last[b] - back, :]  # (H, T)
            torch.testing.assert_close(rows[b], eager, atol=1e-5, rtol=1e-4)
    for b, s in enumerate(samples):  # alone: the same row on the sample's own keys
        decoder.generate([s])
        T = rec.rows[(3, 0)].shape[-1]
        torch.testing.assert_close(rec.rows[(3, 0)][0], batched[(3, 0)][b, :, -T:], atol=1e-5, rtol=1e-4)
        assert int(rec.last[0]) == int(last[b]) - (batched[(3, 0)].shape[-1] - T)
