"""The recipe's ``trainer:`` section: how many processes, on what, at what precision."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_refine.recipes.schema import RecipeError, build_dataclass

_DEVICE_TO_ACCELERATOR = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings of a run; ``num_workers`` is DataLoader processes per rank
    and ``enable_progress_bar: null`` shows the bar only on a terminal; elsewhere (a log file, a
    pipe) a progress line is written every ``progress_every`` seconds (0: none)."""

    accelerator: str | None = None  # default: from model.device, else "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | int | None = None
    num_workers: int = 0
    enable_progress_bar: bool | None = None
    progress_every: float = 30.0  # seconds between progress lines when there is no bar


def trainer_config(raw: dict[str, Any], source: str) -> TrainerConfig:
    section = raw.get("trainer") or {}
    if not isinstance(section, dict):
        raise RecipeError(f"{source}: trainer: expected a mapping")
    cfg = build_dataclass(TrainerConfig, section, f"{source}: trainer")
    if cfg.accelerator is None:
        device = str((raw.get("model") or {}).get("device") or "")
        cfg.accelerator = _DEVICE_TO_ACCELERATOR.get(device.split(":")[0], "auto")
    if cfg.num_nodes < 1 or cfg.num_workers < 0 or cfg.progress_every < 0:
        raise RecipeError(f"{source}: trainer: num_nodes must be >= 1, num_workers and progress_every >= 0")
    if (isinstance(cfg.devices, int) and cfg.devices < 1 and cfg.devices != -1) or cfg.devices in ([], ""):
        raise RecipeError(f"{source}: trainer.devices: {cfg.devices!r} names no device (a count of 1 or more, -1 for all, or a list of indices)")
    if cfg.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RecipeError(f"{source}: trainer.accelerator: {cfg.accelerator!r}, but this machine has no usable GPU (torch.cuda.is_available() is False)")
    return cfg


_OBSERVER = "lightning.fabric.strategies.launchers.subprocess_script"


class _PeerDied(logging.Handler):
    """Lightning's launcher watches its DDP ranks; when one dies it logs that (at info level) and
    kills every process with SIGKILL, the launcher too. This turns its note into the run's one line,
    the last thing the job prints."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "terminated with code" in text:
            match = re.search(r"\[rank: (\d+)\].*PID (\d+) terminated with code (-?\d+)", text)
            who = f"rank {match.group(1)} (pid {match.group(2)}) ended with code {match.group(3)}" if match else text
            sys.stderr.write(f"mllm-refine: error: DDP {who}; every rank is being stopped (exit 137), "
                             "what was written is kept, rerun to resume\n")  # fmt: skip
            sys.stderr.flush()


def quiet_lightning() -> None:
    """Lightning's start-up notes and its hint about DataLoader workers would bury the CLI's
    own output; real warnings still show, and a DDP rank's death is one line (``_PeerDied``)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    observer = logging.getLogger(_OBSERVER)
    if not any(isinstance(h, _PeerDied) for h in observer.handlers):
        observer.addHandler(_PeerDied(logging.INFO))
    observer.setLevel(logging.INFO)
    observer.propagate = False
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Consider setting `persistent_workers=True`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def make_trainer(cfg: TrainerConfig, output: Path, callbacks: list[Any], source: str = "recipe") -> Any:
    """A Lightning ``Trainer`` for ``cfg``; a setting Lightning refuses is one ``RecipeError``."""
    import lightning.pytorch as pl

    from mllm_refine.lightning.progress import ProgressLog, SampleProgressBar
    from mllm_refine.lightning.stopping import StopOnSignal

    bar = sys.stderr.isatty() if cfg.enable_progress_bar is None else cfg.enable_progress_bar
    log = [ProgressLog(cfg.progress_every)] if not bar and cfg.progress_every > 0 else []
    try:
        return pl.Trainer(
            accelerator=cfg.accelerator or "auto",  # trainer_config resolves it; "auto" is Lightning's default
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            precision=cfg.precision,  # type: ignore[arg-type]  # a recipe value; Lightning names a bad one
            callbacks=[*callbacks, StopOnSignal(), *([SampleProgressBar()] if bar else []), *log],
            enable_progress_bar=bar,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,  # RecipeData splits the pending ids itself
            # Off: refiners that take gradients (ViCrop grad-att, pure-grad) need autograd, which
            # inference mode forbids even under enable_grad; the decoder itself runs under no_grad.
            inference_mode=False,
            default_root_dir=str(output),
        )
    except (ValueError, RuntimeError, TypeError) as e:  # Lightning's MisconfigurationException is a ValueError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecipeError(f"{source}: trainer: {first}") from e
