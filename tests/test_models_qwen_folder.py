"""Saved Qwen-family checkpoint folders load and run whether or not torchvision is installed.

Their processors also take a video processor, which transformers builds only with torchvision;
images need only the image processor and the tokenizer, so the folder loads with those two.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from mllm_refine.cli import main
from mllm_refine.models import load_model
from mllm_refine.testing.tiny_qwen import tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl

ROOT = Path(__file__).resolve().parents[1]
NO_TORCHVISION = importlib.util.find_spec("torchvision") is None

FACTORIES: dict[str, Callable[[], tuple[Any, Any]]] = {
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-qwen2.5-vl": tiny_qwen2_5_vl,
    "tiny-qwen3-vl": tiny_qwen3_vl,
}
VIDEO_PROCESSORS = {
    "Qwen2VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen3VLProcessor": "Qwen3VLVideoProcessor",
}


def _video_config(image_config: dict[str, Any], processor_name: str) -> dict[str, Any]:
    """The video processor's config as a torchvision install saves it: the image settings."""
    config = {k: v for k, v in image_config.items() if k != "image_processor_type"}
    return {**config, "video_processor_type": VIDEO_PROCESSORS[processor_name]}


def save_hub_layout(model: Any, processor: Any, folder: Path) -> Path:
    """The files of a Qwen-VL checkpoint on the hub: ``preprocessor_config.json``,
    ``video_preprocessor_config.json``, tokenizer files and the chat template."""
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    name = type(processor).__name__
    image = json.loads((folder / "preprocessor_config.json").read_text()) | {"processor_class": name}
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    video = _video_config(image, name) | {"processor_class": name}
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (folder / "chat_template.jinja").write_text(processor.chat_template)
    return folder


def save_processor_layout(model: Any, processor: Any, folder: Path) -> Path:
    """What ``processor.save_pretrained`` writes where torchvision is installed: one
    ``processor_config.json`` holding the image and the video processor."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["video_processor"] = _video_config(config["image_processor"], type(processor).__name__)
    (folder / "processor_config.json").write_text(json.dumps(config, indent=2))
    return folder


def _run(out: Path, model_path: str | Path) -> list[dict[str, Any]]:
    args = ["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(out), f"model.path={model_path}"]
    assert main([*args, "data={name: shapes, n: 4}", "decode.max_new_tokens=3"]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def in_memory_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, str]]]:
    """Each tiny model's answers, run from the registered in-memory model."""
    root = tmp_path_factory.mktemp("in_memory")
    return {name: [(r["id"], r["prediction"]) for r in _run(root / name, name)] for name in FACTORIES}


@pytest.mark.parametrize("layout", [save_hub_layout, save_processor_layout], ids=["hub_files", "processor_config"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_saved_folder_runs_and_answers_as_the_in_memory_model(tmp_path, name, layout, in_memory_answers):
    folder = layout(*FACTORIES[name](), tmp_path / "ckpt")
    records = _run(tmp_path / "run", folder)
    assert all(r["error"] is None for r in records)
    assert [(r["id"], r["prediction"]) for r in records] == in_memory_answers[name]


@pytest.mark.skipif(not NO_TORCHVISION, reason="with torchvision the full processor loads")
@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_without_torchvision_the_processor_has_the_pil_image_processor_and_no_video_processor(tmp_path, name):
    folder = save_hub_layout(*FACTORIES[name](), tmp_path / "ckpt")
    _, processor = load_model(str(folder))
    assert type(processor).__name__ == type(FACTORIES[name]()[1]).__name__
    assert processor.get_attributes() == ["image_processor", "tokenizer"]
    assert not hasattr(processor, "video_processor")
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert processor.chat_template


def _one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, folder: Path) -> str:
    capsys.readouterr()  # saving the folder wrote its own progress to stderr
    args = ["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(tmp_path / "run"), f"model.path={folder}"]
    assert main([*args, "data={name: shapes, n: 4}"]) == 2
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("mllm-refine: error:")]  # after the run's start line
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("mllm-refine: error: model.path: cannot load")
    assert str(folder) in errors[0]
    return errors[0]


def test_a_folder_without_an_image_processor_is_one_line_naming_it(tmp_path, capsys):
    folder = save_hub_layout(*tiny_qwen2_vl(), tmp_path / "ckpt")
    (folder / "preprocessor_config.json").unlink()
    assert "image processor" in _one_line_error(capsys, tmp_path, folder)


@pytest.mark.skipif(not NO_TORCHVISION, reason="the image processor it names needs torchvision")
def test_an_image_processor_that_needs_torchvision_is_one_line_naming_it(tmp_path, capsys):
    folder = save_hub_layout(*tiny_qwen2_vl(), tmp_path / "ckpt")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["image_processor_type"] = "Cohere2VisionImageProcessor"  # transformers has no PIL version of it
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    assert "torchvision" in _one_line_error(capsys, tmp_path, folder).lower()
