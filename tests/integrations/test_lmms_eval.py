"""The lmms-eval model ``mllm_refine``: found through lmms-eval's entry points, honouring each
request's generation settings, and answering a local lmms-eval task as ``mllm-refine run`` does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("gguf")  # the embedded model

from mllm_refine.integrations.lmms_eval import RefinedLMM, decode_settings  # noqa: E402

COLOURS = ["red", "green", "blue", "black", "gray", "teal", "brown", "yellow"]
CHOICES = {"yes_no": ["yes", "no"], "colour": COLOURS, "shape": ["circle", "rectangle", "triangle"]}


def test_generation_settings_become_decode_settings():
    greedy = {"until": ["\n\n"], "max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
    assert decode_settings(greedy, 8) == {"stop": ["\n\n"], "max_new_tokens": 16, "do_sample": False}
    assert decode_settings({"until": "ANSWER"}, 8) == {"stop": ["ANSWER"], "max_new_tokens": 8, "do_sample": False}
    sampled = decode_settings({"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 4}, 8)
    assert sampled == {"stop": [], "max_new_tokens": 4, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert decode_settings({"temperature": 0.7, "do_sample": False}, 8)["do_sample"] is False
    with pytest.raises(ValueError, match=r"generation_kwargs.num_beams=4: beam search is not supported"):
        decode_settings({"num_beams": 4}, 8)


def test_lmms_eval_finds_the_model_through_its_entry_points():
    from lmms_eval.models import get_model

    assert get_model("mllm_refine") is RefinedLMM


def _task_folder(root: Path) -> Path:
    """easy-VQA test questions as a local lmms-eval task pair (open answers and multiple choice)
    and as an ``mllm-refine`` manifest over the same files."""
    from mllm_refine.data.easy_vqa import EasyVQA, answer_type

    data = EasyVQA("test", limit=6)
    (root / "images").mkdir()
    rows = []
    for i in range(len(data)):
        s = data[i]
        s.images[0].save(root / "images" / f"{s.id}.png")
        choices = CHOICES[answer_type(s.answers[0])]
        rows.append({"id": s.id, "image": f"images/{s.id}.png", "question": s.question, "answers": s.answers,
                     "choices": choices, "label": choices.index(s.answers[0])})  # fmt: skip
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'data.jsonl'}\ntest_split: test\n"
    common += "doc_to_visual: !function utils.doc_to_visual\ndoc_to_text: !function utils.doc_to_text\n"
    (tasks / "local_vqa.yaml").write_text(
        "task: local_vqa\n" + common + textwrap.dedent("""\
        output_type: generate_until
        doc_to_target: !function utils.doc_to_target
        generation_kwargs: {max_new_tokens: 8, until: ["\\n"], temperature: 0, do_sample: false}
        process_results: !function utils.process_results
        metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
        """)
    )
    (tasks / "local_mc.yaml").write_text(
        "task: local_mc\n" + common + textwrap.dedent("""\
        output_type: multiple_choice
        target_delimiter: ""
        doc_to_choice: choices
        doc_to_target: label
        metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
        """)
    )
    (tasks / "utils.py").write_text(textwrap.dedent(f"""\
        from PIL import Image
        ROOT = {str(root)!r}
        def doc_to_visual(doc):
            return [Image.open(ROOT + "/" + doc["image"]).convert("RGB")]
        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"]
        def doc_to_target(doc):
            return doc["answers"][0]
        def process_results(doc, results):
            return {{"exact_match": float(results[0].strip() == doc["answers"][0])}}
        """))
    return root


def _logged(out: Path, task: str) -> list[dict]:
    (path,) = out.glob(f"*/*_samples_{task}.jsonl")
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()), key=lambda r: r["doc_id"])


def test_a_local_task_answers_as_mllm_refine_run_does(tmp_path):
    root = _task_folder(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    lmms = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "mllm_refine",
         "--model_args", "recipe=dualpd,pretrained=smollm2-135m-easyvqa", "--tasks", "local_vqa,local_mc",
         "--include_path", str(root / "tasks"), "--output_path", str(tmp_path / "lmms"), "--log_samples", "--batch_size", "4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert lmms.returncode == 0, lmms.stderr[-3000:]
    run = subprocess.run(
        [sys.executable, "-m", "mllm_refine.cli", "run", "dualpd", "--output", str(tmp_path / "run"),
         "data.name=manifest", f"data.path={root / 'data.jsonl'}", "decode.max_new_tokens=8", 'decode.stop=["\\n"]'],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ours = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["prediction"] for r in ours}
    rows = [json.loads(line) for line in (root / "data.jsonl").read_text().splitlines()]
    answers = [r["filtered_resps"] for r in _logged(tmp_path / "lmms", "local_vqa")]
    assert answers == [by_id[r["id"]] for r in rows]
    assert sum(a == r["answers"][0] for a, r in zip(answers, rows)) >= 5  # the embedded model answers easy-VQA

    # multiple choice: per choice, the continuation's mean NLL under DualPD's refined logits
    from mllm_refine import Refiner, Sample
    from mllm_refine.refiner import images_of

    refiner = Refiner.from_recipe("dualpd")
    for logged, row in zip(_logged(tmp_path / "lmms", "local_mc"), rows):
        sample = Sample(id=f"local_mc/test/{logged['doc_id']}", question=row["question"], images=images_of(str(root / row["image"]), "image"))
        expected = refiner.loglikelihood(row["choices"], samples=[sample] * len(row["choices"]))
        tok = refiner.decoder.tokenizer
        for (value, greedy), choice, (logp, eg) in zip(logged["filtered_resps"], row["choices"], expected):
            nll = -logp / len(tok(choice, add_special_tokens=False)["input_ids"])
            assert (float(value), greedy == "True") == (pytest.approx(nll, abs=1e-4) if math.isfinite(nll) else nll, eg)
