"""The recipes shipped with mllm-refine, installed as package data (``mllm_refine_recipes``).

Every YAML file beside this module is registered under its file name through the
``register_recipes`` hook, the same path a third-party plugin's recipes take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mllm_refine.hookspecs import hookimpl

HERE = Path(__file__).resolve().parent


@hookimpl
def register_recipes(register: Callable[[str, Path], None]) -> None:
    for path in sorted(HERE.glob("*.yaml")):
        register(path.stem, path)
