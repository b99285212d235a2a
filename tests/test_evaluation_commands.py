"""`oneforcing evaluate`, `compare`, `vbench` and the ToyEvaluation callback on tiny exported models."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from oneforcing.callbacks.export import export_weights
from oneforcing.commands.compare import compare
from oneforcing.commands.evaluate import evaluate_checkpoint, real_toy_set, resolve_checkpoint
from oneforcing.commands.vbench import export_vbench, vbench_name
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.toy.evaluation_callback import ToyEvaluation

from conftest import TINY_BACKBONE

TOY_IO = dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny teacher and a tiny framewise student (from the teacher's weights), both exported."""
    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    teacher = TeacherModule(backbone=TOY_IO, sample_steps=2)
    teacher.configure_model()
    teacher_path = export_weights(teacher, root / "teacher.safetensors")
    student = DistillationModule([], backbone=TOY_IO, generator_weights=str(teacher_path), ema_start=None)
    student.configure_model()
    return {"teacher": teacher_path, "student": export_weights(student, root / "student.safetensors"), "root": root}


def test_evaluate_then_compare_gives_a_table_with_seed_spread_plots_and_a_grid(exports, tmp_path):
    for seed in (0, 1):
        evaluate_checkpoint(exports["student"], tmp_path / f"student{seed}", "student", seed=seed, num_videos=4,
                            steps_sweep=[1, 2], long_frames=48, batch_size=4)
    teacher = evaluate_checkpoint(exports["teacher"], tmp_path / "teacher0", "teacher", num_videos=4, batch_size=4)
    student = json.loads((tmp_path / "student0" / "metrics.json").read_text())
    assert student["steps"] == 1 and set(student["sweep"]) == {"1", "2"}
    assert student["long_frames"] == 48 and student["metrics"]["drift"] is not None
    assert teacher["steps"] == 2 and teacher["long_frames"] == 0, "a bidirectional teacher has no long roll-out"
    for name in ("fd", "kid", "sharpness_ratio", "dynamics_ratio", "flicker_excess", "attr_colour"):
        assert name in student["metrics"]
    report = compare([str(tmp_path)], tmp_path / "report")
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| student |"))
    assert "| 2 |" in row and "±" in row, "two seeds of one method: mean ± std"
    assert (tmp_path / "report" / "grid.gif").stat().st_size > 0
    assert list((tmp_path / "report").glob("steps_*.png")) and list((tmp_path / "report").glob("frames_*.png"))


def test_evaluate_and_compare_refuse_bad_inputs_clearly(exports, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weights.safetensors"):
        resolve_checkpoint(None, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="exactly one of"):
        resolve_checkpoint(None, None)
    with pytest.raises(ValueError, match="holds no metrics.json"):
        compare([str(tmp_path / "empty")], tmp_path / "report")
    with pytest.raises(ValueError, match="at least 4x"):
        evaluate_checkpoint(exports["student"], tmp_path / "e", "s", num_videos=4, long_frames=20)
    with pytest.raises(ValueError, match="--num-frames sets the exact teacher's video length.*Drop it"):
        evaluate_checkpoint(exports["student"], tmp_path / "e", "s", num_videos=4, exact_frames=6)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="not an export of a oneforcing module"):
        evaluate_checkpoint(tmp_path / "bare.safetensors", tmp_path / "e", "s", num_videos=4)


def test_a_checkpoint_of_the_wrong_model_kind_is_named(tmp_path):
    checkpoint = {"state_dict": {}, "hyper_parameters": {"_class_path": "oneforcing.toy.feature_net_module.FeatureNetModule"}}
    torch.save(checkpoint, tmp_path / "features.ckpt")
    with pytest.raises(ValueError, match="holds a FeatureNetModule"):
        evaluate_checkpoint(tmp_path / "features.ckpt", tmp_path / "e", "s", num_videos=4)


def test_vbench_export_names_videos_prompt_index_and_shares_seeds_across_prompts(exports, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square moving left\n")
    written = export_vbench(str(exports["student"]), str(prompts), tmp_path / "vbench", samples_per_prompt=2)
    names = sorted(p.name for p in written)
    assert names == sorted(vbench_name(p, i) for p in ("a red circle", "a blue square moving left") for i in (0, 1))
    assert vbench_name("a red circle", 3) == "a red circle-3.mp4"
    prompts.write_text("a red/blue circle\n")
    with pytest.raises(ValueError, match="cannot be file names"):
        export_vbench(str(exports["student"]), str(prompts), tmp_path / "v2")
    prompts.write_text("a purple dodecahedron\n")
    with pytest.raises(ValueError, match="dodecahedron"):
        export_vbench(str(exports["student"]), str(prompts), tmp_path / "v3")


def test_toy_evaluation_callback_logs_metrics_to_tensorboard(tmp_path):
    real, captions = real_toy_set(6, 5)
    batch = {"caption": captions[:2], "pixels": real[:2], "num_skipped": torch.tensor(0)}
    torch.manual_seed(0)
    module = TeacherModule(backbone=TOY_IO, sample_steps=2)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="eval")
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ToyEvaluation(every_n_steps=1, num_videos=4)])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 2, batch_size=None))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"eval/fd", "eval/sharpness_ratio", "eval/attr_colour"} <= set(tags)
    assert [e.step for e in events.Scalars("eval/fd")] == [1, 2]


def test_the_exact_teacher_is_evaluated_as_the_ceiling_row(tmp_path):
    """--checkpoint exact: its samples are copies of the evaluation's bank (precision 0, the bank's ideal coverage),
    with the colour of their captions; it needs --num-frames, which a trained checkpoint refuses."""
    report = evaluate_checkpoint("exact", tmp_path / "exact", "exact", num_videos=8, steps=8, samples_per_caption=2,
                                 bank_size=2, exact_frames=4)
    metrics = report["metrics"]
    assert report["weights"] == "teacher" and report["steps"] == 8
    assert metrics["bank_precision"] < 0.01, metrics["bank_precision"]
    assert metrics["attr_colour"] == 1.0
    assert json.loads((tmp_path / "exact" / "metrics.json").read_text())["module"] == "ExactTeacherSampler"
    with pytest.raises(ValueError, match="needs --num-frames"):
        evaluate_checkpoint("exact", tmp_path / "e", "exact", num_videos=4)
    with pytest.raises(FileNotFoundError, match="or pass 'exact'"):
        resolve_checkpoint("exakt", None)
