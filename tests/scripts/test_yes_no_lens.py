"""scripts/yes_no_lens.py: the margin identity it rests on, its summary rows against hand values,
and its reading of a finished run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mllm_refine.functional import contrast

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lens_script():
    spec = importlib.util.spec_from_file_location("yes_no_lens", ROOT / "scripts" / "yes_no_lens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("space", ["logits", "log_softmax"])
def test_a_contrast_answers_yes_or_no_by_the_difference_of_lens_margins(space: str) -> None:
    g = torch.Generator().manual_seed(0)
    final, early = torch.randn(5, 11, generator=g) * 3, torch.randn(5, 11, generator=g) * 7  # (B, V)
    yes, no = 2, 7
    dz = contrast(final, early, space)  # (B, V)
    by_hand = (final[:, yes] - final[:, no]) - (early[:, yes] - early[:, no])
    torch.testing.assert_close(dz[:, yes] - dz[:, no], by_hand)


def margins(final: list[float], lens_layer_1: list[float], truth: list[int]) -> dict[str, torch.Tensor]:
    f = torch.tensor(final)
    lens = torch.stack([torch.zeros(len(final)), torch.tensor(lens_layer_1)], 1)  # (N, 2): layers 0 and 1
    return {"final": f, "lens": lens, "lens_raw": lens * 10, "truth": torch.tensor(truth, dtype=torch.float),
            "both": torch.ones(len(final))}  # fmt: skip


def test_summary_rows_match_hand_values(lens_script) -> None:
    # The final margin ranks every yes above every no (AUROC 1) and answers yes on 2 of 4; layer 1's
    # lens has a constant offset of +5: the contrast keeps the ranking but answers no everywhere.
    m = margins([1.0, 2.0, -1.0, 0.5], [5.0, 5.0, 5.0, 5.0], [1, 1, 0, 0])
    rows = {r["reading"]: r for r in lens_script.summary(m)}
    final = rows["final z_N"]
    assert final["mean_yes"] == pytest.approx(1.5) and final["mean_no"] == pytest.approx(-0.25)
    assert final["auroc"] == pytest.approx(1.0) and final["contrast_yes"] == pytest.approx(75.0)
    one = rows["1 (norm)"]
    assert one["contrast_yes"] == 0.0 and one["contrast_auroc"] == pytest.approx(1.0)
    assert one["auroc"] == pytest.approx(0.5)  # a constant margin cannot rank
    assert rows["0 (no norm)"]["contrast_yes"] == pytest.approx(75.0)  # the zero lens changes nothing


def test_against_run_reads_the_chosen_layer_through_the_run_combiners_norm(lens_script, tmp_path: Path) -> None:
    run = tmp_path / "dola"
    run.mkdir()
    (run / "recipe.yaml").write_text(
        "name: t\nmodel: {path: tiny-llava}\nlayer_selector: {name: dola_jsd}\n"
        "logit_combiner: {name: dola_contrast, final_norm: false}\n"
    )
    answers = ["no", "yes", "no", "yes"]
    layers = [1, 0, 1, 1]
    (run / "predictions.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "prediction": a, "choices": {"layer": [l]}}) + "\n"
        for i, (a, l) in enumerate(zip(answers, layers))
    ))  # fmt: skip
    m = margins([1.0, 2.0, -1.0, 0.5], [0.05, 0.0, 0.05, -0.2], [1, 1, 0, 0])
    r = lens_script.against_run(m, ["q0", "q1", "q2", "q3"], run)
    # dola_contrast reads the lens without the norm (lens_raw = 10 x lens): m_N - m_l = [0.5, 2, -1.5, 2.5]
    assert r["n"] == 4 and r["predicted_yes"] == pytest.approx(75.0) and r["run_yes"] == pytest.approx(50.0)
    assert r["agreement"] == pytest.approx(75.0)
    assert r["auroc"] == pytest.approx(0.5)  # yes: 0.5, 2 against no: -1.5, 2.5 -> 2 of 4 pairs in order


def test_auroc_ranks_margins_of_hundreds_of_logits(lens_script) -> None:
    truth = torch.tensor([1, 1, 0, 0])
    assert lens_script.auroc(torch.tensor([300.0, 301.0, 299.0, 300.0]), truth) == pytest.approx(0.875)  # 3 of 4 pairs, one tie
    assert lens_script.auroc(torch.tensor([-400.0, -401.0, -399.0, -398.0]), truth) == 0.0
