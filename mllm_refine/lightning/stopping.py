"""Stopping on a signal: SIGTERM (``kill``, ``timeout``, a scheduler's preemption, a container
stop) and SIGINT (Ctrl-C) end the run after the batch in flight, whose records are written, so a
rerun resumes from there."""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning.pytorch as pl

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on a signal after a complete batch; ``code`` is the exit status (128 + the
    signal's number, as a shell reports a process the signal ended)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.code = 128 + signum
        self.quiet = False  # True on ranks other than 0, which leave the report to rank 0
        super().__init__(f"stopped by {self.name}")


class StopOnSignal(pl.Callback):
    """Turns SIGTERM and SIGINT into ``Stopped`` at the end of the current batch. Placed after the
    shard writer, so the batch's records are on disk first. A second signal stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: do not wait for the batch
            self._restore()
            raise Stopped(signum)
        self.received = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self.received is not None:
            self._restore()
            raise Stopped(self.received)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        if self.received is not None:  # the signal came during the last batch: stop all the same
            raise Stopped(self.received)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
