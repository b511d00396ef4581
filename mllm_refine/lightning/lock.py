"""One writer per run folder: an OS lock (``flock``) on ``<output>/.lock``, held by the launching
process for the whole run and released by the OS when it exits, however it exits."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK = ".lock"


class FolderBusy(ValueError):
    """Another process is writing into the run folder."""


class FolderLock:
    def __init__(self, output: Path) -> None:
        self.path = Path(output) / LOCK
        self.file: IO[str] | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock at once or raise ``FolderBusy`` naming the holder."""
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise FolderBusy(
                f"{self.path.parent}: another run (pid {holder}) is writing into this folder; "
                "wait for it to end, or give this run another --output"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor drops the lock
            self.file = None
