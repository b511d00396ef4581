"""The committed component reference matches the code; parameter types and comments are read right."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from mllm_refine.plugin_manager import ALLOW_ENV, BLOCK_ENV
from mllm_refine.recipes.reference import COMMAND, OUTPUT, component_reference, field_comments, param_table, type_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(bool(os.environ.get(ALLOW_ENV) or os.environ.get(BLOCK_ENV)), reason="plugins filtered by env")
def test_committed_reference_is_current():
    committed = (ROOT / OUTPUT).read_text(encoding="utf-8") if (ROOT / OUTPUT).is_file() else ""
    assert committed == component_reference(), f"{OUTPUT} is stale: regenerate it with `{COMMAND}` and commit it"


@dataclass
class Params:
    ratio: float = 0.5  # share of heads
    keys: Literal["all", "image"] = "all"
    layers: list[int] | None = None


def test_types_defaults_and_comments():
    assert type_name(list[int] | None) == "list[int] | null"
    assert type_name(Literal["all", "image"]) == "'all' | 'image'"
    assert field_comments(Params) == {"ratio": "share of heads", "keys": "", "layers": ""}
    table = param_table(Params)
    assert table[2] == "| `ratio` | `float` | `0.5` | share of heads |"
    assert table[4] == "| `layers` | `list[int] \\| null` | `null` |  |"
