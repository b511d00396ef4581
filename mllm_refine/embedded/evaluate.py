"""Greedy easy-VQA accuracy of a LLaVA checkpoint through the plain transformers path: chat
template, processor, ``generate(do_sample=False)``; exact match on the answer word."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import torch
from PIL import Image

from mllm_refine.data.easy_vqa import EasyVQA


def normalize_answer(text: str) -> str:
    text = text.strip().lower()
    return text[:-1].strip() if text.endswith(".") else text


@torch.no_grad()
def generate_answers(model: Any, processor: Any, questions: list[str], images: list[Image.Image], max_new_tokens: int = 8) -> list[str]:
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True)
        for q in questions
    ]
    processor.tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[:, inputs["input_ids"].shape[1] :]  # (B, T) generated tokens only
    return [processor.tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]


def evaluate(
    model: Any,
    processor: Any,
    dataset: EasyVQA,
    batch_size: int = 32,
    blank: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy overall and per answer type, the share of "yes" among yes/no predictions, and the
    prediction histogram. ``blank=True`` swaps every image for a plain white one."""
    rows = list(range(len(dataset)))
    rows.sort(key=lambda k: len(dataset.rows[k][1]))  # similar lengths per batch: less padding
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    predictions: Counter[str] = Counter()
    yes = 0
    start = time.time()
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    for n in range(0, len(rows), batch_size):
        samples = [dataset[k] for k in rows[n : n + batch_size]]
        images = [white if blank else s.images[0] for s in samples]
        answers = generate_answers(model, processor, [s.question for s in samples], images)
        for s, a in zip(samples, answers):
            pred, kind = normalize_answer(a), s.meta["type"]
            predictions[pred] += 1
            ok = s.answers is not None and pred == s.answers[0]
            for key in ("overall", kind):
                correct[key] += ok
                total[key] += 1
            yes += kind == "yes_no" and pred == "yes"
        if log and (n // batch_size) % 50 == 0:
            log(f"eval {min(n + batch_size, len(rows))}/{len(rows)} acc {correct['overall'] / total['overall']:.3f} ({time.time() - start:.0f} s)")
    result: dict[str, Any] = {k: correct[k] / total[k] for k in total}
    result["n"] = dict(total)
    result["yes_rate"] = yes / max(1, total["yes_no"])
    result["predictions"] = dict(predictions.most_common())
    result["seconds"] = round(time.time() - start, 1)
    return result
