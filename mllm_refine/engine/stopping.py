"""Stop strings that work with any tokenizer (word-level ones included)."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    """Ends a row once its generated text contains any of ``stops``."""

    def __init__(self, tokenizer, stops: list[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
