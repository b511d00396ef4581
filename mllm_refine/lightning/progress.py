"""A progress bar that counts samples (and so shows samples/s), on stderr."""

from __future__ import annotations

import sys
import time
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
        total = len(self.trainer.datamodule.rank_indices())  # type: ignore[attr-defined]  # Trainer sets it in fit/predict
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


class ProgressLog(pl.Callback):
    """Where stderr is no terminal (a cluster log, a pipe): a line every ``every`` seconds with
    rank 0's samples done of its share, samples/s and the time left, and one at the end."""

    def __init__(self, every: float = 30.0, clock: Any = None, stream: Any = None) -> None:
        self.every = every
        self.clock = clock or time.monotonic
        self.stream = stream
        self.seen = self.total = 0
        self.start = self.last = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.total = len(trainer.datamodule.rank_indices())  # type: ignore[attr-defined]  # Trainer sets it in fit/predict
        self.seen, self.start = 0, self.clock()
        self.last = self.start

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
        now = self.clock()
        if trainer.is_global_zero and now - self.last >= self.every:
            self.last = now
            self.write(now)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write(self.clock())

    def write(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.seen / elapsed
        left = (self.total - self.seen) / rate if rate > 0 else float("inf")
        share = 100 * self.seen / self.total if self.total else 100.0
        eta = _duration(left) if left != float("inf") else "?"
        line = f"Predicting: {self.seen}/{self.total} samples ({share:.0f}%), {rate:.2f} samples/s, {_duration(elapsed)} elapsed, ETA {eta}"
        print(line, file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
