"""The ``oneforcing`` console script end to end, in subprocesses: data → fit → sample, and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, TINY_BACKBONE, TINY_FRAMES, TINY_SIZE, describe, run_cli, tiny_fit_args
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """``oneforcing data toy`` then a 3-step ``oneforcing fit`` of a 2-layer teacher; returns the version dir."""
    root = tmp_path_factory.mktemp("cli")
    data = run_cli(["data", "toy", "--out", str(root / "data"), "--num-videos", "32", "--num-val-videos", "8",
                    "--seed", "0", "--num-frames", str(TINY_FRAMES), "--size", str(TINY_SIZE),
                    "--samples-per-shard", "16"])
    assert data.returncode == 0, describe(data)
    assert "Wrote train: 32 videos in 2 shards, val: 8 videos in 1 shards" in data.stdout.replace("\n", " ")
    fit = run_cli(tiny_fit_args(root / "data", root / "runs", name="tiny", max_steps=3))
    assert fit.returncode == 0, describe(fit)
    assert "`Trainer.fit` stopped: `max_steps=3` reached." in fit.stdout + fit.stderr
    return root / "runs" / "tiny" / "version_0"


def test_fit_writes_logs_weights_and_config(trained_run):
    assert list(trained_run.glob("events.out.tfevents*")), sorted(trained_run.iterdir())
    assert (trained_run / "weights.safetensors").stat().st_size > 10_000
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert (trained_run / "samples" / "step_000003.gif").is_file()  # SampleVideoLogger after validation
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 3
    assert config["model"]["init_args"]["backbone"]["num_layers"] == TINY_BACKBONE["num_layers"]


def test_fit_logs_scalars_and_the_sample_video(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "data/skipped_samples"} <= scalars, scalars
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2]  # one per iteration, 3 iterations
    assert "samples" in events.Tags()["images"]


def test_sample_writes_gifs_and_mp4(trained_run, tmp_path):
    weights = trained_run / "weights.safetensors"
    prompts = ["a large red circle moving right slowly", "a small blue square moving up quickly"]
    result = run_cli(["sample", "--checkpoint", str(weights), "--prompt", prompts[0], "--prompt", prompts[1],
                      "--out", str(tmp_path / "gif"), "--steps", "2", "--format", "gif"])
    assert result.returncode == 0, describe(result)
    gifs = sorted((tmp_path / "gif").glob("*.gif"))
    assert [g.name for g in gifs] == ["0000_a_large_red_circle_moving_right_slowly.gif",
                                      "0001_a_small_blue_square_moving_up_quickly.gif"]
    with Image.open(gifs[0]) as gif:
        assert gif.format == "GIF" and gif.n_frames == TINY_FRAMES
        assert gif.size == (TINY_SIZE * 4, TINY_SIZE * 4)

    checkpoint = trained_run / "checkpoints" / "last.ckpt"  # a Lightning .ckpt loads too (weights_only)
    result = run_cli(["sample", "--checkpoint", str(checkpoint), "--prompt", prompts[0], "--out",
                      str(tmp_path / "mp4"), "--steps", "2", "--format", "mp4", "--guidance-scale", "2.0",
                      "--guidance-interval", "[0.25, 1.0]", "--shift", "3"])
    assert result.returncode == 0, describe(result)
    mp4 = tmp_path / "mp4" / "0000_a_large_red_circle_moving_right_slowly.mp4"
    assert mp4.read_bytes()[4:8] == b"ftyp"


def test_fit_starts_from_exported_weights(trained_run, tmp_path):
    """The demo's fine-tuning path: `init_weights` accepts a module export (keys `model.transformer.*`)."""
    from safetensors.torch import load_file

    init = trained_run / "weights.safetensors"
    data_root = trained_run.parents[2] / "data"
    # lr 0: one step must leave the weights exactly as loaded, so the export equals the init file; another
    # seed, so that a random initialisation could not match the file by chance
    result = run_cli(tiny_fit_args(data_root, tmp_path, name="finetune", max_steps=1)
                     + ["--model.init_args.init_weights", str(init), "--model.init_args.lr", "0.0",
                        "--seed_everything", "1"])
    assert result.returncode == 0, describe(result)
    before, after = load_file(init), load_file(tmp_path / "finetune" / "version_0" / "weights.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_sample_rejects_a_word_outside_the_vocabulary(trained_run, tmp_path):
    result = run_cli(["sample", "--checkpoint", str(trained_run / "weights.safetensors"),
                      "--prompt", "a red circle", "--prompt", "a pink elephant", "--out", str(tmp_path)])
    assert result.returncode != 0
    assert "['elephant', 'pink']" in result.stderr and "Use only:" in result.stderr
    assert not list(tmp_path.glob("*.gif"))  # every prompt is checked before any sampling


def test_unknown_config_key_fails_naming_the_key(tmp_path):
    result = run_cli(["fit", "--config", "configs/toy/teacher.yaml", "--model.init_args.not_a_key", "1",
                      "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert result.returncode != 0
    assert "not_a_key" in result.stderr
    assert not list(tmp_path.rglob("events.out.tfevents*"))  # failed before training started


def test_fit_with_a_missing_data_root_names_the_directory(tmp_path):
    missing = tmp_path / "no_such_data"
    result = run_cli(tiny_fit_args(missing, tmp_path / "runs"))
    assert result.returncode != 0
    assert f"Shard directory {missing / 'train'} does not exist" in result.stderr
    assert f"oneforcing data toy --out {missing}" in result.stderr


def test_data_toy_rejects_bad_arguments(tmp_path):
    result = run_cli(["data", "toy", "--out", str(tmp_path / "d"), "--size", "30", "--num-videos", "0"])
    assert result.returncode != 0
    assert "--size=30 must be a multiple of 4" in result.stderr and "--num-videos=0 must be >= 1" in result.stderr


def test_help_lists_every_command():
    result = run_cli(["--help"])
    assert result.returncode == 0, describe(result)
    for command in ("fit", "data toy", "sample"):
        assert command in result.stdout


def test_user_errors_are_one_message_without_a_traceback(tmp_path, capsys, monkeypatch):
    """A command's bad input ends with the problem and its fix on stderr and exit status 2; a corrupt or truncated
    checkpoint names the file; ONEFORCING_TRACEBACK=1 gives the traceback back."""
    from oneforcing.cli import main

    monkeypatch.delenv("ONEFORCING_TRACEBACK", raising=False)
    exported = REPO_ROOT / "assets" / "toy_teacher.safetensors"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(exported.read_bytes()[:100])
    truncated = tmp_path / "truncated.ckpt"
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, whole)
    truncated.write_bytes(whole.read_bytes()[:300])
    cases = [([str(tmp_path / "missing.safetensors")], "missing.safetensors does not exist"),
             ([str(broken)], f"{broken} cannot be read: .*corrupt or truncated"),
             ([str(truncated)], f"{truncated} cannot be read: .*corrupt or truncated")]
    for checkpoint, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["sample", "--checkpoint", *checkpoint, "--prompt", "a red circle", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and re.search(message, err) and "Traceback" not in err, err
        assert err.startswith("oneforcing sample: error: ")
    monkeypatch.setenv("ONEFORCING_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        main(["sample", "--checkpoint", str(tmp_path / "missing.safetensors"), "--prompt", "a red circle"])


def test_help_shows_readable_choices(capsys):
    from oneforcing.cli import main

    for command in (["sample", "--help"], ["data", "toy", "--help"], ["data", "encode", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        out = capsys.readouterr().out
        assert "<lambda>" not in out and "<function" not in out, command


def test_the_progress_bar_reads_iterations_of_max_steps(monkeypatch):
    """The bar is titled with iterations of max_steps, integral metrics are integers, v_num is left out, and slow
    rates read in seconds per iteration; the CLI gives every run this bar unless the config names one or turns it
    off."""
    import sys

    from lightning.pytorch.callbacks import TQDMProgressBar

    from oneforcing.callbacks.progress import IterationProgressBar, rate_text
    from oneforcing.lightning_cli import OneForcingCLI

    assert rate_text(0.05) == "20.0 s/it" and rate_text(12.345) == "12.35 it/s" and rate_text(None) == "– it/s"
    bar = IterationProgressBar()
    monkeypatch.setattr(type(bar).__mro__[1], "get_metrics",
                        lambda self, trainer, module: {"v_num": 1, "iteration": 6.0, "loss": 0.25})
    assert bar.get_metrics(None, None) == {"iteration": 6, "loss": 0.25}
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    monkeypatch.chdir(REPO_ROOT)
    base = ["--config", "configs/toy/ode_init_framewise.yaml", "--trainer.logger", "false"]
    assert isinstance(OneForcingCLI(args=base, run=False).trainer.progress_bar_callback, IterationProgressBar)
    assert OneForcingCLI(args=[*base, "--trainer.enable_progress_bar", "false"], run=False).trainer.progress_bar_callback is None
    named = OneForcingCLI(args=[*base, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"], run=False)
    assert type(named.trainer.progress_bar_callback) is TQDMProgressBar
