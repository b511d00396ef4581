"""The per-step hook into ``generate``: parts -> logits -> penalties and warpers."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.engine.capture import Capture
from mllm_refine.engine.config import DecodeConfig
from mllm_refine.engine.forcing import TeacherForcing
from mllm_refine.engine.parts import Parts
from mllm_refine.engine.step_view import StepView


def post_processors(config: DecodeConfig) -> LogitsProcessorList:
    """Penalty and warpers, applied after the parts so they act on the combined logits."""
    procs = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            procs.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(TopPLogitsWarper(config.top_p))
    return procs


class RefineProcessor(LogitsProcessor):
    """Runs the recipe's selector and combiner on each step's logits.

    A row whose combined logits hold NaN or +inf, or no finite value at all, falls back to the
    model's own logits for that step; ``fallbacks`` counts it per sample. ``observe``, when
    given, sees each step's view and the logits the step decodes from (diagnostics, read only).
    With ``generators`` (one per sample) the processor samples the step's token itself; with
    ``force`` each row takes its given continuation's token instead (``TeacherForcing``).
    """

    def __init__(
        self,
        parts: Parts,
        capture: Capture,
        adapter: ModelAdapter,
        config: DecodeConfig,
        batch: int,
        observe: Callable[[StepView, torch.Tensor], None] | None = None,
        generators: list[torch.Generator] | None = None,
        force: TeacherForcing | None = None,
    ) -> None:
        self.observe = observe
        self.force = force
        self.generators = generators
        self.parts = parts
        self.capture = capture
        self.adapter = adapter
        self.post = post_processors(config)
        self.suppress = torch.tensor(adapter.image_token_ids, dtype=torch.long)
        # Kept on the model's device until the batch ends (``chosen``): no host sync per step.
        self.layers: list[torch.Tensor] = []  # per step: (B,) chosen layer
        self.fallbacks: torch.Tensor = torch.zeros(batch, dtype=torch.long)  # (B,) steps each row fell back

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.capture.branches is not None:  # Needs.branches: their forwards, in lockstep
            self.capture.branches.step(input_ids)
        view = StepView(self.capture.step, input_ids, scores.float(), self.capture, self.adapter)
        logits = view.logits  # (B, V)
        layer = None
        if self.parts.layer_selector is not None:
            layer = self.parts.layer_selector.select(view)  # (B,)
            self.layers.append(layer.detach())
        if self.parts.logit_combiner is not None:
            logits = self.parts.logit_combiner.combine(view, layer)  # (B, V)
        # Image placeholders are inputs only; the model must never emit them. Suppressed before
        # the guard, so a row whose only finite token was a placeholder falls back too.
        suppress = self.suppress.to(logits.device)
        logits = logits.index_fill(1, suppress, float("-inf"))
        # A row's max is NaN if it holds a NaN, +inf if it holds +inf, -inf if nothing is finite;
        # max - max is 0 for a finite max and NaN otherwise (two ops; isfinite takes five).
        # A row that fell back takes the model's own logits, selected without asking the host.
        top = logits.amax(-1)  # (B,)
        bad = (top - top) != 0  # (B,)
        logits = torch.where(bad[:, None], view.logits, logits).index_fill_(1, suppress, float("-inf"))  # (B, V)
        self.fallbacks = self.fallbacks.to(bad.device) + bad  # (B,)
        if self.post:
            # The repetition penalty must not see left padding (batch answers would differ from
            # single ones): padding slots repeat the row's newest token, which it penalises anyway.
            valid = self.capture.prompt_valid  # (B, T0)
            T0 = valid.shape[1]
            own = torch.cat([torch.where(valid, input_ids[:, :T0], input_ids[:, -1:]), input_ids[:, T0:]], 1)  # (B, T)
            logits = self.post(own, logits)  # type: ignore[arg-type]  # transformers annotates the legacy LongTensor
        if self.observe is not None:
            self.observe(view, logits)
        if self.force is not None:
            logits = self.force(self.capture.step, logits)
        elif self.generators is not None:
            logits = self.draw(logits)
        self.capture.step += 1
        return logits  # type: ignore[return-value]  # transformers annotates the legacy FloatTensor

    def chosen(self) -> tuple[list[list[int]], list[int]]:
        """Per row, the layer chosen at each step (empty without a selector) and the steps that
        fell back, copied to the host once, when the batch has ended."""
        B = self.fallbacks.shape[0]
        layers = torch.stack(self.layers, 1).tolist() if self.layers else [[] for _ in range(B)]  # (B, N)
        return layers, self.fallbacks.tolist()

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample each row from its own generator; the returned logits keep only the drawn token,
        so ``generate``'s own draw has one choice. At batch 1 this is the draw ``generate`` makes
        from a global generator seeded the same way."""
        assert self.generators is not None
        probs = logits.softmax(-1)  # (B, V)
        picks = torch.cat([torch.multinomial(probs[b : b + 1], 1, generator=g) for b, g in enumerate(self.generators)])  # (B, 1)
        return torch.full_like(logits, float("-inf")).scatter_(1, picks, 0.0)
