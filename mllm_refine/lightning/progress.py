"""A progress bar that counts samples (and so shows samples/s), on stderr."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class SampleProgressBar(TQDMProgressBar):
    """Rank 0's bar over its own share of samples; stdout stays free for the score line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def init_predict_tqdm(self) -> Tqdm:
        total = len(self.trainer.datamodule.rank_indices())
        return Tqdm(desc="Predicting", total=total, unit="sample", disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)  # fmt: skip

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        pass  # the total counts samples and is set when the bar is made

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.seen += len(batch)
        if not self.predict_progress_bar.disable:
            self.predict_progress_bar.n = self.seen
            self.predict_progress_bar.refresh()
