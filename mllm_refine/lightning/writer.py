"""The prediction writer: each rank appends its finished records to its own shard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from mllm_refine.lightning.shards import repair_tail, shard_path


class ShardWriter(BasePredictionWriter):
    """Appends each batch's records to ``shards/rank-NNNNN.jsonl``, flushed and fsynced when the
    batch ends, so a kill loses at most the batch in flight."""

    def __init__(self, output: Path) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.file: IO[str] | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = shard_path(self.output, trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self.file = path.open("a", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: list[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self.file is not None
        self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prediction))
        self.file.flush()
        os.fsync(self.file.fileno())

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()
