"""The LightningModule: one recipe's decoder answering batches of samples."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch

from mllm_refine.data.manifest import SampleError
from mllm_refine.data.sample import Sample
from mllm_refine.engine.decoder import Decoder
from mllm_refine.lightning.data import Unreadable
from mllm_refine.models import load_model
from mllm_refine.recipes.binding import decoder_for
from mllm_refine.recipes.loader import Recipe


def error_line(sample_id: str, error: BaseException) -> str:
    """One line naming the sample: the error's first line, prefixed with the id unless it names it."""
    text = (str(error).strip().splitlines() or [""])[0]
    message = text if isinstance(error, SampleError) else f"{type(error).__name__}: {text}".strip()
    return message if repr(str(sample_id)) in message else f"sample {str(sample_id)!r}: {message}"


def error_record(sample_id: str, question: str | None, error: BaseException, recipe: str) -> dict[str, Any]:
    return {"id": sample_id, "question": question, "prediction": None, "recipe": recipe, "error": error_line(sample_id, error)}


def context_limit(model: Any) -> int | None:
    """The language model's context length (``max_position_embeddings``), when it declares one."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    limit = getattr(text, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


class RefineModule(pl.LightningModule):
    """``predict_step`` decodes a batch into records; a failing batch is retried one sample at a
    time, and a sample that still fails becomes an error record (unless ``fail_fast``). Nothing
    here talks to other ranks."""

    def __init__(self, recipe: Recipe, fail_fast: bool = False, loaded: tuple[Any, Any] | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.fail_fast = fail_fast
        self.loaded = loaded  # (model, processor) already loaded by an earlier run of a sweep
        self.model: torch.nn.Module | None = None
        self.decoder: Decoder | None = None
        self.decode_started: float | None = None  # after the model load, for tokens/s
        # A resume may leave fewer pending samples than ranks; a rank with none just waits.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.loaded is None:
            device = str(self.trainer.strategy.root_device) if self._trainer is not None else "cpu"
            self.loaded = load_model(**{**self.recipe.model, "device": device})
        self.model = self.loaded[0]

    def on_predict_start(self) -> None:
        # Built after Lightning placed the model, so the engine sees its final device and dtype.
        assert self.loaded is not None  # configure_model loaded it
        self.decoder = decoder_for(self.recipe, self.model, self.loaded[1])
        self.decode_started = time.perf_counter()

    def predict_step(self, batch: list[Sample | Unreadable], batch_idx: int) -> list[dict[str, Any]]:
        records, samples = [], []
        for item in batch:
            if isinstance(item, Unreadable):
                if self.fail_fast:
                    raise SampleError(error_line(item.id, item.error)) from item.error
                records.append(error_record(item.id, None, item.error, self.recipe.name))
            else:
                samples.append(item)
        return records + self._decode(samples)

    def _too_long(self, sample: Sample) -> SampleError | None:
        """A question whose tokens plus ``max_new_tokens`` exceed the model's context length; the
        model would otherwise read positions it was never trained on (or index out of range)."""
        assert self.decoder is not None
        limit = context_limit(self.model)
        if limit is None:
            return None
        n = len(self.decoder.tokenizer(sample.question, add_special_tokens=False)["input_ids"])
        budget = limit - self.recipe.decode.max_new_tokens
        if n <= budget:
            return None
        return SampleError(
            f"sample {sample.id!r}: the question is {n} tokens, over the model's context length {limit} "
            f"less decode.max_new_tokens {self.recipe.decode.max_new_tokens}"
        )

    def _decode(self, samples: list[Sample]) -> list[dict[str, Any]]:
        if not samples:
            return []
        assert self.decoder is not None
        refused = []
        for s in samples:
            try:
                error = self._too_long(s)
            except Exception as e:  # the tokenizer refused the question: this sample alone fails
                error = SampleError(error_line(s.id, e))
            if error is not None:
                if self.fail_fast:
                    raise error
                refused.append({**error_record(s.id, s.question, error, self.recipe.name), "answers": s.answers})
        if refused:
            bad = {r["id"] for r in refused}
            return refused + self._decode([s for s in samples if s.id not in bad])
        try:
            return [{**asdict(p), "recipe": self.recipe.name, "error": None} for p in self.decoder.generate(samples)]
        except Exception as e:
            if len(samples) == 1:
                s = samples[0]
                if self.fail_fast:
                    raise SampleError(error_line(s.id, e)) from e
                return [{**error_record(s.id, s.question, e, self.recipe.name), "answers": s.answers}]
            return [r for s in samples for r in self._decode([s])]
