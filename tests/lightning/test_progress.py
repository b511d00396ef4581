"""Progress where there is no terminal: a line every N seconds with done/total, rate and ETA."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from mllm_refine.cli import main
from mllm_refine.lightning.progress import ProgressLog
from mllm_refine.testing import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_n_seconds_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    log = ProgressLog(every=30, clock=clock, stream=out)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(rank_indices=lambda: list(range(100))), is_global_zero=True)
    log.on_predict_start(trainer, None)
    for t in (10, 20, 40, 50):  # 10 samples per batch; 30 s pass only at the third batch
        clock.now = 100.0 + t
        log.on_predict_batch_end(trainer, None, None, list(range(10)), 0)
    assert out.getvalue().splitlines() == ["Predicting: 30/100 samples (30%), 0.75 samples/s, 0m40s elapsed, ETA 1m33s"]
    log.on_predict_end(trainer, None)
    assert out.getvalue().splitlines()[-1] == "Predicting: 40/100 samples (40%), 0.80 samples/s, 0m50s elapsed, ETA 1m15s"


def test_other_ranks_stay_quiet():
    clock, out = Clock(), io.StringIO()
    log = ProgressLog(every=0, clock=clock, stream=out)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(rank_indices=lambda: [0, 1]), is_global_zero=False)
    log.on_predict_start(trainer, None)
    log.on_predict_batch_end(trainer, None, None, [0], 0)
    log.on_predict_end(trainer, None)
    assert out.getvalue() == ""


def test_a_run_into_a_log_file_reports_progress(tmp_path, capsys):
    rc = main(["run", str(ROOT / "recipes/vanilla.yaml"), "-o", str(tmp_path / "run"), *TINY_RUN, "data.n=4",
               "decode.max_new_tokens=2", "trainer.progress_every=0.001"])  # fmt: skip
    assert rc == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("Predicting: ")]
    assert lines and lines[-1].startswith("Predicting: 4/4 samples (100%)")
