"""Greedy accuracy of the Qwen2.5-VL embedded model on the easy-VQA scenes test split, through the
plain transformers path (chat template, processor, ``generate``), per answer type and per target
size bucket, with the real images and with blank ones."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from mllm_refine.data.scenes import EasyVQAScenes
from mllm_refine.embedded.evaluate import generate_answers, normalize_answer


def score_scenes(
    model: Any, processor: Any, dataset: EasyVQAScenes, batch_size: int = 32, blank: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy overall, per answer type and per size bucket; the share of "yes" among yes/no
    predictions. ``blank=True`` swaps every image for a plain white one."""
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    yes, start = 0, time.time()
    for n in range(0, len(dataset), batch_size):
        samples = [dataset[k] for k in range(n, min(n + batch_size, len(dataset)))]
        images = [Image.new("RGB", s.images[0].size, (255, 255, 255)) if blank else s.images[0] for s in samples]
        answers = generate_answers(model, processor, [s.question for s in samples], images)
        for s, a in zip(samples, answers):
            pred = normalize_answer(a)
            ok = s.answers is not None and pred == s.answers[0]
            for key in ("overall", s.meta["type"], s.meta["size_bucket"] or "no_target"):
                correct[key] += ok
                total[key] += 1
            yes += s.meta["type"] == "yes_no" and pred == "yes"
        if log and (n // batch_size) % 10 == 0:
            log(f"eval {min(n + batch_size, len(dataset))}/{len(dataset)} acc {correct['overall'] / total['overall']:.3f} ({time.time() - start:.0f} s)")
    result: dict[str, Any] = {k: round(correct[k] / total[k], 4) for k in total}
    result["n"] = dict(total)
    result["yes_rate"] = round(yes / max(1, total["yes_no"]), 4)
    result["seconds"] = round(time.time() - start, 1)
    return result


def evaluate_scenes(assets: Path, limit: int | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Assembles ``assets`` as users get them, then scores the test split with real and blank images."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mllm_refine.embedded.qwen_assembly import assemble
    from mllm_refine.processors import load_processor

    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble(Path(tmp) / "checkpoint", assets=assets)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        processor = load_processor(str(folder))
    test = EasyVQAScenes("test", limit=limit)
    out = {"test": score_scenes(model, processor, test, log=log), "test_blank_image": score_scenes(model, processor, test, blank=True, log=log)}
    for name, r in out.items():
        log(f"{name}: " + " ".join(f"{k} {v}" for k, v in r.items() if isinstance(v, float)))
    return out
