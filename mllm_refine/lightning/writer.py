"""The prediction writer: each rank appends its finished records to its own shard."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from mllm_refine.lightning.shards import record_line, repair_tail, shard_path


class ShardWriteError(OSError):
    """A batch could not be written (disk full, quota); the shard is cut back to its last
    complete batch, so what was written before stays and a rerun resumes from it."""


class ShardWriter(BasePredictionWriter):
    """Appends each batch's records to ``shards/rank-NNNNN.jsonl``, flushed and fsynced when the
    batch ends, so a kill loses at most the batch in flight."""

    def __init__(self, output: Path) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.file: IO[str] | None = None
        self.launcher: int | None = None  # the launching process of a child rank

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A rank the launcher started on this node is its child: when the launcher is gone (killed,
        # its lock released), the rank must not go on writing beside a rerun.
        self.launcher = os.getppid() if trainer.global_rank > 0 and trainer.local_rank > 0 else None
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
        if self.launcher is not None and os.getppid() != self.launcher:
            sys.stderr.write(f"mllm-refine: rank {trainer.global_rank}: its launcher (pid {self.launcher}) is gone; "
                             "stopping without writing this batch\n")  # fmt: skip
            sys.stderr.flush()
            os._exit(1)  # no cleanup that could write: the batch is simply decoded again by a rerun
        start = self.file.tell()
        try:
            self.file.write("".join(record_line(r) for r in prediction))
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as e:
            raise self._write_failed(e, start) from e

    def _write_failed(self, error: OSError, start: int) -> ShardWriteError:
        """Drop the part of the batch that reached the file and name the shard and the cause."""
        assert self.file is not None
        name = self.file.name
        try:
            self.file.close()
        except OSError:
            pass  # the buffered rest of the batch cannot be written either
        self.file = None
        try:
            with open(name, "r+b") as f:
                f.truncate(start)
        except OSError:
            pass  # a torn tail left here is cut when the rank appends again
        cause = error.strerror or str(error)
        failed = ShardWriteError(
            f"{name}: cannot write a batch of records ({cause}); the records already in it are kept, rerun to resume"
        )
        failed.errno = error.errno
        return failed

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()
