"""Without matplotlib, ``inspect`` fails before loading anything, with a one-line hint."""

from __future__ import annotations

import sys
from pathlib import Path

from mllm_refine.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_missing_matplotlib_is_a_one_line_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    recipe = str(ROOT / "recipes" / "dualpd.yaml")
    code = main(["inspect", recipe, "--image", str(tmp_path / "none.png"), "--question", "q?", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install matplotlib" in err
    assert not any(tmp_path.iterdir())
