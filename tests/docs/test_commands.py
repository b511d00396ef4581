"""Every ``mllm-refine`` command the README and docs/*.md show runs as written, on tiny data:
runs get ``data.limit=2 decode.max_new_tokens=2`` appended (later overrides win), inspections
the second, and all write under a scratch folder, so an example that stops working fails here."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_refine import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = ["data.limit=2", "decode.max_new_tokens=2"]

pytest.importorskip("gguf")  # the shipped recipes run the embedded model


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """``(first line number, lines)`` of each fenced block marked ``bash`` or ``sh`` or unmarked."""
    blocks, current, start, lang = [], None, 0, ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current, start, lang = [], n + 1, line[3:].strip()
            else:
                if lang in ("bash", "sh", ""):
                    blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def shown_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for each ``mllm-refine`` line of a shell block (continuations joined,
    trailing comments and optional ``[...]`` arguments dropped)."""
    out = []
    for doc in DOCS:
        for start, lines in shell_blocks(doc.read_text(encoding="utf-8")):
            for i, line in enumerate("\n".join(lines).replace("\\\n", " ").splitlines()):
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                line = re.sub(r"\s*\[[^\]]*\]", "", line)  # synopsis-style optional arguments
                if re.match(r"^([A-Z_]+=\S+\s+)*mllm-refine\s", line):
                    # a loop over recipes (``$r``): two of them, so what compares them has two runs
                    for r in ("vanilla", "dualpd") if "$r" in line else ("",):
                        out.append((f"{doc.name}:{start + i}" + (f"[{r}]" if r else ""), line.replace("$r", r)))
    return out


def _needs(command: str) -> str | None:
    """Why a command cannot run here, or None."""
    if "accelerator=gpu" in command and not torch.cuda.is_available():
        return "needs a GPU"
    if "entropy" in command:
        return "the example plugin in examples/mllm-refine-entropy (tests/test_example_plugin.py runs it)"
    return None


def _argv(command: str, scratch: Path) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and not words[0].startswith("mllm-refine"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    args = words[1:]  # after "mllm-refine"
    expanded = []
    for a in args:
        matches = sorted(glob.glob(a, root_dir=scratch)) if any(c in a for c in "*?") else []
        expanded += matches or [a]
    if expanded and expanded[0] == "run":
        expanded += TINY
    elif expanded and expanded[0] == "inspect":  # its --id is looked up in the recipe's whole data
        expanded += TINY[1:]
    return env, expanded


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder laid out like the checkout (``recipes/`` beside it), holding the docs' inputs."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    from mllm_refine.data.easy_vqa import EasyVQA

    EasyVQA("test", limit=1)[0].images[0].save(folder / "cat.png")
    return folder


# Runs first: the comparisons shown after them read their folders (runs/<recipe name> by default).
COMMANDS = sorted(shown_commands(), key=lambda wc: " run " not in f" {wc[1]} ")


def test_the_docs_show_commands():
    kinds = {c.split()[1] for _, c in COMMANDS if not c.startswith(("MLLM", "for"))}
    assert {"run", "compare", "inspect", "plugins", "recipe"} <= kinds, kinds


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_shown_command_runs(where, command, scratch, monkeypatch, capsys):
    reason = _needs(command)
    if reason:
        pytest.skip(reason)
    env, argv = _argv(command, scratch)
    monkeypatch.chdir(scratch)
    if "trainer.strategy=ddp" in argv:  # Lightning relaunches the process per rank: a child of its own
        done = subprocess.run([sys.executable, "-m", "mllm_refine.cli", *argv], capture_output=True, text=True,
                              cwd=scratch, env={**os.environ, **env}, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{where}: {command}\n{done.stderr[-2000:]}"
        return
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = cli.main(argv)
    assert code == 0, f"{where}: {command} -> exit {code}\n{capsys.readouterr().err[-2000:]}"
