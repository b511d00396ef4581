"""Where a run's numbers came from: package versions, git commit, device, attention backend."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("mllm-refine", "torch", "transformers", "lightning", "torchmetrics", "pluggy", "pillow", "accelerate")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(folder: Path | None = None) -> dict[str, Any] | None:
    """Commit of the source tree holding mllm_refine and whether it has local changes; None when
    it is not a git checkout (an installed wheel)."""
    folder = folder or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def device_info(trainer: Any, model: torch.nn.Module | None) -> dict[str, Any]:
    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else (platform.processor() or platform.machine())
    info: dict[str, Any] = {
        "accelerator": type(trainer.accelerator).__name__,
        "root_device": str(root),
        "name": name,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "torch_threads": torch.get_num_threads(),
    }
    if model is not None:
        config = getattr(model, "config", None)
        text = getattr(config, "text_config", None) or config
        info["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
        info["attention"] = getattr(text, "_attn_implementation", None)
    if root.type == "cuda":
        info["sdpa_backends"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    return info
