"""Stop strings checked on a window of the newest tokens agree with checking all new text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import mllm_refine.embedded
from mllm_refine.engine.stopping import StopOnStrings
from mllm_refine.testing.tiny_models import tiny_llava


def tokenizers():
    """The tiny models' word-level tokenizer and the embedded model's byte-level BPE one."""
    yield tiny_llava()[1].tokenizer
    yield PreTrainedTokenizerFast(tokenizer_file=str(Path(mllm_refine.embedded.__file__).parent / "assets" / "tokenizer.json"))


def first_stop_by_full_text(tokenizer, row: list[int], stops: list[str]) -> int | None:
    """The first step whose text so far holds a stop, decoding everything every step."""
    for t in range(1, len(row) + 1):
        if any(s in tokenizer.decode(row[:t], skip_special_tokens=True) for s in stops):
            return t
    return None


@pytest.mark.parametrize("which", [0, 1], ids=["word-level", "byte-level-bpe"])
def test_the_window_finds_every_stop_at_the_step_full_decoding_does(which):
    tok = list(tokenizers())[which]
    rng = random.Random(0)
    text = "The red circle sits left of a blue square. Answer: yes\nQuestion: no.  done\u00e9\u00e8 ok" * 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    checked = 0
    for _ in range(60):
        start = rng.randrange(0, len(ids) - 20)
        row = ids[start : start + rng.randrange(5, 40)]
        full = tok.decode(row, skip_special_tokens=True)
        a = rng.randrange(0, len(full) - 1)
        stops = [full[a : a + rng.randrange(1, 12)], "never-there"]
        want = first_stop_by_full_text(tok, row, stops)
        criterion = StopOnStrings(tok, stops, prompt_length=0)
        got = next((t for t in range(1, len(row) + 1) if criterion(torch.tensor([row[:t]]), None)[0]), None)
        assert got == want, (row, stops)
        checked += want is not None
    assert checked >= 50  # nearly every drawn stop is found somewhere


def test_rows_of_a_batch_are_checked_on_their_own():
    _, processor = tiny_llava()
    tok = processor.tokenizer
    a = tok("hello world again", add_special_tokens=False)["input_ids"]
    b = tok("nothing to see", add_special_tokens=False)["input_ids"]
    n = min(len(a), len(b))
    prompt = [[7, 7], [7, 7]]
    ids = torch.tensor([prompt[0] + a[:n], prompt[1] + b[:n]])
    done = StopOnStrings(tok, ["world"], prompt_length=2)(ids, None)
    assert done.tolist() == [("world" in tok.decode(a[:n])), False]
    assert StopOnStrings(tok, ["world"], prompt_length=ids.shape[1])(ids, None).tolist() == [False, False]  # nothing new yet
