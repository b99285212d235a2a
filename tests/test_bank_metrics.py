"""Bank precision and coverage on hand-made cases, the bank set, and the metrics in evaluate / compare / callback."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from oneforcing.callbacks.export import export_weights
from oneforcing.commands.compare import compare
from oneforcing.commands.evaluate import evaluate_checkpoint
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.toy.bank_metrics import bank_scores, ideal_coverage, nearest_bank_videos, rms_distances
from oneforcing.toy.evaluation import bank_set, real_toy_set
from oneforcing.toy.evaluation_callback import ToyEvaluation
from oneforcing.toy.exact_bank import ExactToyTeacher, caption_videos

from conftest import TINY_BACKBONE

RED = "a large red circle moving left quickly"
BLUE = "a small blue square moving up slowly"


def rms(a, b):
    """RMS pixel difference, written out: sqrt(Σ (a − b)² / count)."""
    diff = (a.double() - b.double()).flatten()
    return math.sqrt(sum(float(d) ** 2 for d in diff) / diff.numel())


@pytest.fixture(scope="module")
def banks():
    """Toy bank videos (6 frames, 16×16) of two captions: 3 of RED, 2 of BLUE."""
    return {RED: caption_videos(RED, 3, seed=1, num_frames=6, frame_size=16),
            BLUE: caption_videos(BLUE, 2, seed=1, num_frames=6, frame_size=16)}


def test_distances_are_rms_pixel_differences(banks):
    samples, bank = banks[RED][:2] * 0.9, banks[BLUE]
    d = rms_distances(samples, bank)
    for i in range(2):
        for j in range(2):
            assert d[i, j] == pytest.approx(rms(samples[i], bank[j]), rel=1e-9)
    distances, index = nearest_bank_videos(banks[RED][[2, 0]], banks[RED])
    assert index.tolist() == [2, 0] and distances.abs().max() < 1e-6


def test_exact_copies_have_distance_zero_and_full_coverage(banks):
    samples = torch.cat([banks[RED], banks[BLUE]])
    scores = bank_scores(samples, [RED] * 3 + [BLUE] * 2, banks)
    assert scores["bank_precision"] == pytest.approx(0.0, abs=1e-6)
    assert scores["bank_coverage"] == 1.0


def test_one_video_repeated_covers_one_bank_video(banks):
    samples = banks[RED][1:2].expand(5, -1, -1, -1, -1)
    scores = bank_scores(samples, [RED] * 5, banks)
    assert scores["bank_coverage"] == pytest.approx(1 / 3)
    assert scores["bank_precision"] == pytest.approx(0.0, abs=1e-6)
    # averaged over captions: RED collapsed (1/3), BLUE fully covered (2/2)
    mixed = bank_scores(torch.cat([samples, banks[BLUE]]), [RED] * 5 + [BLUE] * 2, banks)
    assert mixed["bank_coverage"] == pytest.approx((1 / 3 + 1) / 2)


def test_the_mean_of_two_modes_is_far_from_both(banks):
    a, b = banks[BLUE]
    between = rms(a, b)
    scores = bank_scores(((a + b) / 2)[None], [BLUE], banks)
    assert scores["bank_precision"] == pytest.approx(between / 2, rel=1e-6)  # exactly half-way from each mode
    assert scores["bank_precision"] > 0.05, "toy videos of one caption differ by much more than rounding"
    slightly_off = bank_scores((0.98 * a + 0.02 * b)[None], [BLUE], banks)["bank_precision"]
    assert slightly_off < scores["bank_precision"] / 10


def test_ideal_coverage_and_bad_inputs(banks):
    assert ideal_coverage(1, 16) == pytest.approx(1 / 16)
    assert ideal_coverage(4, 16) == pytest.approx(1 - (15 / 16) ** 4)
    with pytest.raises(ValueError, match="no bank videos of"):
        bank_scores(banks[RED][:1], ["a small green circle moving up slowly"], banks)
    with pytest.raises(ValueError, match="one caption per sample"):
        bank_scores(banks[RED][:2], [RED], banks)
    with pytest.raises(ValueError, match="differ in"):
        rms_distances(banks[RED][:, :3], banks[RED])


def test_the_bank_set_repeats_captions_and_holds_the_exact_teachers_videos():
    _, captions = real_toy_set(8, 5, num_frames=4, size=16)
    bank = bank_set(captions, 8, samples_per_caption=3, bank_size=2, seed=9, num_frames=4, size=16)
    chosen = list(dict.fromkeys(captions))[:2]  # 8 // 3 = 2 captions
    assert bank.prompts == [chosen[0]] * 3 + [chosen[1]] * 3
    teacher = ExactToyTeacher(bank_size_per_caption=2, captions=chosen, seed=9, num_frames=4, frame_size=16)
    for caption in chosen:
        torch.testing.assert_close(bank.banks[caption], teacher.caption_pixels(caption), atol=1e-3, rtol=0)
    described = bank.describe()
    assert described["ideal_coverage"] == pytest.approx(1 - 0.5 ** 3)
    assert described["world_precision"] > 0.05, "fresh videos of the world are not bank videos"
    assert 0.5 <= described["world_coverage"] <= 1.0
    assert bank_set(captions, 8, samples_per_caption=0) is None


# --- through the command, the comparison and the callback ------------------------------------------------
TOY_IO = dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46)


def test_evaluate_reports_the_bank_metrics_and_compare_tabulates_them(tmp_path):
    torch.manual_seed(0)
    teacher = TeacherModule(backbone=TOY_IO, sample_steps=2)
    teacher.configure_model()
    teacher_path = export_weights(teacher, tmp_path / "teacher.safetensors")
    student = DistillationModule([], backbone=TOY_IO, generator_weights=str(teacher_path), ema_start=None)
    student.configure_model()
    path = export_weights(student, tmp_path / "student.safetensors")
    report = evaluate_checkpoint(path, tmp_path / "eval", "student", num_videos=4, steps_sweep=[2], long_frames=0,
                                 batch_size=4, samples_per_caption=2, bank_size=3)
    assert report["bank"]["captions"] == 2 and report["bank"]["samples_per_caption"] == 2
    for metrics in (report["metrics"], report["sweep"]["2"]):
        assert metrics["bank_precision"] > 0.05, "an untrained student makes no bank videos"
        assert 1 / 3 <= metrics["bank_coverage"] <= 2 / 3  # 2 samples of a caption hit 1 or 2 of its 3 videos
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metrics"]["bank_coverage"] == report["metrics"]["bank_coverage"]
    assert "fresh videos of the world score" in (tmp_path / "eval" / "metrics.md").read_text()
    header = next(line for line in compare([str(tmp_path / "eval")], tmp_path / "cmp").read_text().splitlines()
                  if line.startswith("| method |"))
    assert "bank_precision" in header and "bank_coverage" in header


def test_toy_evaluation_callback_logs_the_bank_metrics(tmp_path):
    real, captions = real_toy_set(4, 5)
    batch = {"caption": captions[:2], "pixels": real[:2], "num_skipped": torch.tensor(0)}
    torch.manual_seed(0)
    module = TeacherModule(backbone=TOY_IO, sample_steps=1)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="eval")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ToyEvaluation(every_n_steps=1, num_videos=4, samples_per_caption=2, bank_size=2)])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    assert {"eval/bank_precision", "eval/bank_coverage", "eval/fd"} <= set(events.Tags()["scalars"])
