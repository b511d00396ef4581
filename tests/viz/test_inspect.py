"""``mllm-refine inspect``: its JSON equals what the engine captured, its PNGs and page render."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from mllm_refine.cli import main
from mllm_refine.components import InputRefiner, LayerSelector, LogitCombiner, Needs
from mllm_refine.data.sample import Sample
from mllm_refine.data.shapes import draw
from mllm_refine.engine import DecodeConfig, Decoder, Parts
from mllm_refine.recipes import load_recipe
from mllm_refine.testing import TINY_RUN
from mllm_refine.testing.tiny_models import tiny_llava
from mllm_refine.viz.capture import diagnostic_needs
from mllm_refine.viz.numbers import crop_numbers
from mllm_refine_plugins.dualpd import HellingerShiftSelector

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("attention", "shift", "heads", "lens")
TOKENS = 2


class Recorder(LayerSelector):
    """Declares what the diagnostic pass captures and keeps each step's StepView values."""

    name = "recorder"

    def __init__(self, needs: Needs) -> None:
        self.declared = needs
        self.seen: list[dict] = []

    def candidates(self) -> list[int]:
        return []

    def needs(self) -> Needs:
        return self.declared

    def select(self, view):
        L = view.num_layers
        self.seen.append(
            {
                "attention": {l: view.attention(l)[0].clone() for l in range(1, L + 1)},
                "scores": {l: view.scores(l)[0].clone() for l in range(1, L + 1)},
                "lens": {l: view.lens(l)[0].softmax(-1) for l in range(L + 1)},
            }
        )
        return torch.full((view.logits.shape[0],), -1)


class Passthrough(LogitCombiner):
    name = "passthrough"

    def combine(self, view, layer):
        return view.logits


@dataclass
class RecordingShift(HellingerShiftSelector):
    """DualPD's selector, keeping the shifts it computed itself at each step."""

    def select(self, view):
        self.__dict__.setdefault("seen", []).append(self.shifts(view)[0].clone())
        return super().select(view)


@dataclass
class FakeCrop(InputRefiner):
    """Reports a box and a map the way a ViCrop-style refiner does, without cropping."""

    name = "fake_crop"

    def refine(self, samples, context):
        out = []
        for s in samples:
            meta = {**s.meta, "fake_crop": {"box": [4, 6, 40, 44], "map": [[0.0, 1.0], [2.0, 0.5]]}}
            out.append(Sample(s.id, s.question, s.images, s.answers, meta))
        return out


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    import random

    path = tmp_path_factory.mktemp("img") / "shape.png"
    draw("circle", "red", 64, random.Random(3)).save(path)
    return path


@pytest.fixture(scope="module")
def sample(picture) -> Sample:
    return Sample(id="shape", question="What color is the shape?", images=[Image.open(picture).convert("RGB")])


@pytest.fixture(scope="module")
def inspected(llava, sample, tmp_path_factory):
    """One inspect run of DualPD (its selector recording its own shifts) plus a refiner that
    reports a crop, every token."""
    from mllm_refine.viz import inspect_recipe

    recipe = load_recipe(ROOT / "recipes" / "dualpd.yaml", [*TINY_RUN, f"decode.max_new_tokens={TOKENS}"])
    recipe.parts.layer_selector = RecordingShift(layers=recipe.parts.layer_selector.layers)
    recipe.parts.input_refiners = [FakeCrop()]
    out = tmp_path_factory.mktemp("inspect")
    inspect_recipe(recipe, sample, out, all_tokens=True, model=llava, log=lambda m: None)
    return recipe, out, json.loads((out / "summary.json").read_text())


def _json(out: Path, side: str, step: int, kind: str) -> dict:
    return json.loads((out / side / f"step_{step:03d}" / f"{kind}.json").read_text())


def test_vanilla_numbers_equal_engine_captures(llava, sample, inspected):
    """Every plot's numbers equal a StepView of an ordinary Decoder run with the same needs."""
    model, processor = llava
    _, out, summary = inspected
    L = model.config.text_config.num_hidden_layers
    rec = Recorder(diagnostic_needs(L))
    parts = Parts(layer_selector=rec, logit_combiner=Passthrough())
    decoder = Decoder(model, processor, parts, DecodeConfig(max_new_tokens=TOKENS))
    pred = decoder.generate([sample])[0]
    assert pred.tokens == summary["sides"]["vanilla"]["tokens"]
    assert len(summary["sides"]["vanilla"]["steps"]) == len(rec.seen) == TOKENS
    for step, seen in enumerate(rec.seen):
        att, lens, heads = (_json(out, "vanilla", step, k) for k in ("attention", "lens", "heads"))
        shift = _json(out, "vanilla", step, "shift")
        means = {l: seen["attention"][l].mean(0) for l in range(1, L + 1)}  # l -> (I,)
        for i, l in enumerate(att["layers"]):
            torch.testing.assert_close(torch.tensor(att["head_mean"][i]), means[l])
            rows, cols = att["grid"]
            torch.testing.assert_close(torch.tensor(att["maps"][i]), means[l].reshape(rows, cols))
            torch.testing.assert_close(torch.tensor(heads["norm"][i]), seen["scores"][l].norm(dim=-1))
        for i, l in enumerate(shift["layers"]):
            ref = (means[l - 1].sqrt() - means[l].sqrt()).norm() / 2**0.5
            torch.testing.assert_close(torch.tensor(shift["shift"][i]), ref)
        token = lens["token"]
        assert token == pred.tokens[step]
        for l in lens["layers"]:
            p = seen["lens"][l]
            torch.testing.assert_close(torch.tensor(lens["p_token"][l]), p[token])
            assert [t["token"] for t in lens["top"][l]] == p.topk(5).indices.tolist()
        assert lens["top"][L][0]["token"] == token  # greedy: the last block's lens is z_N


def test_recipe_numbers_equal_dualpd_own_choices(llava, sample, inspected):
    """The shift curve is the selector's own, the chosen layer its argmax, the marked heads the
    filter's lowest-norm heads, and the diagnostic captures leave the answer unchanged."""
    recipe, out, summary = inspected
    side = summary["sides"]["recipe"]
    selector = recipe.parts.layer_selector
    candidates = selector.candidates()
    for step, own in enumerate(selector.seen):
        shift = _json(out, "recipe", step, "shift")
        curve = dict(zip(shift["layers"], shift["shift"]))
        torch.testing.assert_close(torch.tensor([curve[c] for c in candidates]), own)
        assert shift["candidates"] == candidates
        assert shift["chosen"] == {"layer": side["choices"]["layer"][step]}
        assert side["choices"]["layer"][step] == candidates[int(own.argmax())]
    heads = _json(out, "recipe", 0, "heads")
    marked = heads["marked"]["head_norm_filter.heads"]
    count = round(recipe.parts.head_filters[0].ratio * heads["heads"])
    assert marked and count >= 1
    for i, layer in enumerate(heads["layers"]):
        lowest = torch.tensor(heads["norm"][i]).topk(count, largest=False).indices.sort().values.tolist()
        assert marked[str(layer)] == lowest
    att = _json(out, "recipe", 0, "attention")
    assert att["marked"] == [side["choices"]["layer"][0]]
    model, processor = llava
    plain = load_recipe(ROOT / "recipes" / "dualpd.yaml", [*TINY_RUN, f"decode.max_new_tokens={TOKENS}"])
    plain.parts.input_refiners = [FakeCrop()]
    assert Decoder(model, processor, plain.parts, plain.decode).generate([sample])[0].tokens == side["tokens"]


def test_pngs_render(inspected):
    _, out, summary = inspected
    for side in summary["sides"].values():
        for step in side["steps"]:
            assert set(step["png"]) == set(KINDS) | ({"crop"} if side is summary["sides"]["recipe"] else set())
            for rel in step["png"].values():
                with Image.open(out / rel) as img:
                    img.load()
                    assert img.width >= 300 and img.height >= 200
                    colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
                    assert colours is None or len(colours) > 20  # not blank


def test_html_is_self_contained(inspected):
    _, out, summary = inspected
    page = (out / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<link|<script|url\(|https?://", page)
    pngs = sum(len(step["png"]) for side in summary["sides"].values() for step in side["steps"])
    assert len(sources) == pngs + 1  # every plot and the picture
    for side in summary["sides"].values():
        assert side["prediction"] in page


def test_crop_box_and_map_from_a_refiner(inspected):
    _, out, _ = inspected
    for step in range(TOKENS):
        crop = _json(out, "recipe", step, "crop")
        assert crop["box"] == [4, 6, 40, 44] and crop["map"] == [[0.0, 1.0], [2.0, 0.5]]
        assert crop["source"] == {"box": "meta.fake_crop.box", "map": "meta.fake_crop.map"}
        assert _json(out, "vanilla", step, "crop") == {"box": None, "map": None, "source": {}}
        assert not (out / "vanilla" / f"step_{step:03d}" / "crop.png").exists()


def test_crop_numbers_read_choices_and_tensors():
    from mllm_refine.engine import Prediction

    choices = {"vicrop.box": [1, 2, 3, 4], "vicrop.map": torch.ones(2, 3)}
    p = Prediction(id="a", question="q", prediction="x", choices=choices)
    assert crop_numbers(p) == {"box": [1.0, 2.0, 3.0, 4.0], "map": [[1.0] * 3] * 2,
                               "source": {"box": "choices.vicrop.box", "map": "choices.vicrop.map"}}  # fmt: skip


def test_cli_with_dataset_id(tmp_path, capsys, monkeypatch):
    """The command resolves the recipe, its overrides and the dataset sample (the pass itself is
    the fixture's)."""
    import mllm_refine.viz.inspector as inspector

    calls = []

    def fake(recipe, sample, out, all_tokens, log):
        calls.append((recipe, sample, out, all_tokens))
        return Path(out) / "index.html"

    monkeypatch.setattr(inspector, "inspect_recipe", fake)
    code = main(["inspect", str(ROOT / "recipes" / "dualpd.yaml"), "--id", "shapes-0-00001", "-o", str(tmp_path), *TINY_RUN,
                 "decode.max_new_tokens=1", "--all-tokens", "--threads", "1"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "index.html")
    (recipe, sample, out, all_tokens), = calls
    assert recipe.decode.max_new_tokens == 1 and all_tokens and out == tmp_path
    assert sample.id == "shapes-0-00001" and sample.question == "What shape is in the image?" and sample.images


def test_cli_usage_errors(picture, tmp_path, capsys):
    recipe = str(ROOT / "recipes" / "dualpd.yaml")
    assert main(["inspect", recipe, "--image", str(picture), "-o", str(tmp_path)]) == 2
    assert "--question" in capsys.readouterr().err
    assert main(["inspect", recipe, "--id", "nope", "-o", str(tmp_path)]) == 2
    assert "no sample 'nope'" in capsys.readouterr().err



def test_target_box_of_the_sample_is_drawn(tmp_path):
    from mllm_refine.engine import Prediction
    from mllm_refine.viz import plots

    p = Prediction(id="a", question="q", prediction="x", meta={"target_box": [10, 20, 30, 40], "image_size": [64, 64]})
    numbers = crop_numbers(p)
    assert numbers == {"box": None, "map": None, "source": {}, "target": [10.0, 20.0, 30.0, 40.0]}
    png = plots.plot_crop(numbers, Image.new("RGB", (64, 64), "white"), tmp_path / "crop.png")
    assert png is not None and png.stat().st_size > 0
