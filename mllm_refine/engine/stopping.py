"""Stop strings that work with any tokenizer (word-level ones included), checked on the newest
tokens only, so a step's check costs the same at answer token 500 as at token 5."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    """Ends a row at the step whose new token completes any of ``stops`` in its generated text.

    A stop completed at this step ends inside the newest token's text and starts at most
    ``len(stop)`` characters before it, so each step decodes only a window of the newest tokens:
    the newest one and enough before it to hold more than the longest stop's characters (one
    more character than needed, so a window that starts inside a token's multi-byte character or
    loses a leading space still holds the whole stop). A row that ended stays ended
    (``generate`` keeps it finished).
    """

    def __init__(self, tokenizer, stops: list[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_length = prompt_length
        self.longest = max((len(s) for s in stops), default=0)

    def window(self, tokens: list[int]) -> str:
        """The text of the newest tokens that can hold a stop completed by the last one."""
        k = 2
        while k < len(tokens) and len(self.tokenizer.decode(tokens[-k:-1], skip_special_tokens=True)) <= self.longest:
            k *= 2
        return self.tokenizer.decode(tokens[-k:], skip_special_tokens=True)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :].tolist()  # (B, N) generated so far
        done = [bool(row) and any(stop in self.window(row) for stop in self.stops) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]  # legacy BoolTensor
