"""Every YAML under configs/ parses through the CLI, and every toy distillation recipe runs 2 iterations.

In-process (``OneForcingCLI`` as the console script builds it): a fresh interpreter per config would cost 5 s of
imports each; the console script itself is exercised in subprocesses by test_cli.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import RECIPE_FRAMES as FRAMES
from conftest import RECIPE_SIZE as SIZE
from conftest import REPO_ROOT, SUBPROCESS_ENV, describe, tiny_backbone_args
from oneforcing.cli import OneForcingCLI, main

CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
DISTILLATION = [c for c in CONFIGS if c.parent.name == "toy" and c.name not in ("teacher.yaml", "feature_net.yaml")]


@pytest.fixture(autouse=True)
def as_the_console_script(monkeypatch):
    """Run from the repository root with the arguments given to the CLI only (not pytest's in sys.argv)."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", ["oneforcing"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit:  # --print_config prints the resolved config and exits
        main(["fit", "--config", str(config), "--print_config"])
    assert exit.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("config", DISTILLATION, ids=lambda p: p.stem)
def test_toy_recipe_runs_two_iterations_through_the_cli(config, recipe_inputs):
    data = recipe_inputs["ode"] if config.stem.startswith("ode_init") else recipe_inputs["toy"]
    args = ["fit", "--config", str(config), *tiny_backbone_args(),
            "--model.init_args.num_frames", str(FRAMES), "--model.init_args.frame_size", str(SIZE),
            "--data.init_args.root", str(data), "--data.init_args.batch_size", "2", "--data.init_args.val_samples", "2",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
            "--trainer.logger.init_args.save_dir", str(recipe_inputs["runs"]),
            "--trainer.logger.init_args.name", config.stem]
    if config.stem.startswith("ode_init"):
        args += ["--model.init_args.generator_weights", str(recipe_inputs["teacher"])]
    elif config.stem.startswith("one_forcing"):  # 6 blocks for the GAN's feature layers, a window inside 6 frames
        args += ["--model.init_args.teacher_weights", str(recipe_inputs["teacher6"]),
                 "--model.init_args.backbone.num_layers", "6", "--model.init_args.gradient_window_frames", "2"]
    else:
        args += ["--model.init_args.teacher_weights", str(recipe_inputs["teacher"])]
    cli = OneForcingCLI(args=args)
    assert cli.trainer.global_step == cli.trainer.max_steps == 2
    assert (recipe_inputs["runs"] / config.stem / "version_0" / "weights.safetensors").is_file()


RANK_DUMP = """
import hashlib
import lightning as L

class RankDump(L.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        for name in ("generator", "critic"):
            data = b"".join(p.detach().numpy().tobytes() for p in getattr(pl_module, name).parameters())
            with open(f"{self.out}/{name}_rank{trainer.global_rank}.txt", "w") as f:
                f.write(hashlib.sha256(data).hexdigest())
"""


@pytest.mark.engines
def test_self_forcing_dmd_runs_on_two_ddp_processes(recipe_inputs, tmp_path):
    """Two trainable roles, two backward passes per iteration, gloo: the DDP engine on CPU.

    Ranks see different data and noise, so equal final weights on both ranks show that both roles'
    gradients are all-reduced."""
    (tmp_path / "rank_dump.py").write_text(RANK_DUMP)
    config = REPO_ROOT / "configs" / "toy" / "self_forcing_dmd_1step.yaml"
    args = ["fit", "--config", str(config), *tiny_backbone_args(),
            "--model.init_args.num_frames", str(FRAMES), "--model.init_args.frame_size", str(SIZE),
            "--model.init_args.teacher_weights", str(recipe_inputs["teacher"]),
            "--data.init_args.root", str(recipe_inputs["toy"]), "--data.init_args.batch_size", "2",
            "--data.init_args.val_samples", "4", "--trainer.max_steps", "6", "--trainer.val_check_interval", "6",
            "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.devices", "2",
            "--trainer.logger.init_args.save_dir", str(recipe_inputs["runs"]), "--trainer.logger.init_args.name", "ddp",
            "--trainer.callbacks+=rank_dump.RankDump", f"--trainer.callbacks.out={tmp_path}"]
    env = dict(SUBPROCESS_ENV, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "oneforcing.cli", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "`Trainer.fit` stopped: `max_steps=6` reached." in output
    assert (recipe_inputs["runs"] / "ddp" / "version_0" / "weights.safetensors").is_file()
    for role in ("generator", "critic"):
        assert (tmp_path / f"{role}_rank0.txt").read_text() == (tmp_path / f"{role}_rank1.txt").read_text(), role


def test_a_step_list_that_does_not_match_the_trajectory_snapshots_fails_before_training(recipe_inputs):
    config = REPO_ROOT / "configs" / "toy" / "ode_init_framewise.yaml"
    args = ["fit", "--config", str(config), *tiny_backbone_args(),
            "--model.init_args.num_frames", str(FRAMES), "--model.init_args.frame_size", str(SIZE),
            "--model.init_args.generator_weights", str(recipe_inputs["teacher"]),
            "--model.init_args.denoising_steps", "[1000, 500]",
            "--data.init_args.root", str(recipe_inputs["ode"]), "--data.init_args.batch_size", "2",
            "--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", str(recipe_inputs["runs"]),
            "--trainer.logger.init_args.name", "mismatch"]
    with pytest.raises(ValueError, match="do not match the student's steps"):
        OneForcingCLI(args=args)
    assert not list((recipe_inputs["runs"] / "mismatch").rglob("*.ckpt")), "no training step may run"
