"""The LightningModule: one recipe's decoder answering batches of samples."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch

from mllm_refine.data.sample import Sample
from mllm_refine.engine.decoder import Decoder
from mllm_refine.lightning.data import Unreadable
from mllm_refine.models import load_model
from mllm_refine.recipes.loader import Recipe


def error_record(sample_id: str, question: str | None, error: BaseException, recipe: str) -> dict[str, Any]:
    message = f"{type(error).__name__}: {error}".strip()
    return {"id": sample_id, "question": question, "prediction": None, "recipe": recipe, "error": message.splitlines()[0]}


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
        self.decoder = Decoder(self.model, self.loaded[1], self.recipe.parts, self.recipe.decode)
        self.decode_started = time.perf_counter()

    def predict_step(self, batch: list[Sample | Unreadable], batch_idx: int) -> list[dict[str, Any]]:
        records, samples = [], []
        for item in batch:
            if isinstance(item, Unreadable):
                if self.fail_fast:
                    raise item.error
                records.append(error_record(item.id, None, item.error, self.recipe.name))
            else:
                samples.append(item)
        return records + self._decode(samples)

    def _decode(self, samples: list[Sample]) -> list[dict[str, Any]]:
        if not samples:
            return []
        assert self.decoder is not None
        try:
            return [{**asdict(p), "recipe": self.recipe.name, "error": None} for p in self.decoder.generate(samples)]
        except Exception as e:
            if self.fail_fast:
                raise
            if len(samples) == 1:
                s = samples[0]
                return [{**error_record(s.id, s.question, e, self.recipe.name), "answers": s.answers}]
            return [r for s in samples for r in self._decode([s])]
