"""The toy study's script (scripts/toy_study.py): the configs it trains, the curves it reads, its statistics."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT as REPO, load_script
from safetensors import safe_open
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def toy_study():
    return load_script("toy_study")


def study_args(toy_study, tmp_path: Path, *extra: str) -> argparse.Namespace:
    """The study's arguments over a data root whose index records 6-frame videos."""
    data = tmp_path / "toy6"
    (data / "train").mkdir(parents=True, exist_ok=True)
    (data / "train" / "index.json").write_text('{"num_frames": 6}')
    return toy_study.build_parser().parse_args(["--out", str(tmp_path / "study"), "--teacher", "neural.safetensors",
                                                "--results", str(tmp_path / "results"),  # not the repository's kept runs
                                                "--artifacts", str(tmp_path / "artifacts"),
                                                "--data", str(data), *extra])


@pytest.mark.parametrize("method", ["of_chunkwise_1step_ffe", "consistency_1step", "sf_dmd_4step"])
def test_student_config_is_the_recipe_with_the_study_settings(toy_study, tmp_path, monkeypatch, method):
    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path, "--guidance-scale", "1.5", "--iterations", "300"))
    trained = []
    monkeypatch.setattr(study, "fit", lambda name, config: trained.append((name, config)) or Path("w"))
    monkeypatch.setattr(study, "keep", lambda *args, **kwargs: None)
    monkeypatch.setattr(study, "evaluate", lambda *args: None)
    study.student(method, 2, Path("ode.safetensors"))
    name, path = trained[0]
    assert name == f"{method}_seed2"
    cfg = yaml.safe_load(path.read_text())
    recipe = yaml.safe_load((REPO / toy_study.METHODS[method][0]).read_text())
    init = cfg["model"]["init_args"]
    assert init["teacher_weights"] is None
    assert init["teacher"]["class_path"] == "oneforcing.toy.exact_bank.ExactToyTeacher"
    factor = round((recipe["model"]["init_args"]["backbone"]["in_channels"] / 3) ** 0.5)  # the recipe's codec
    assert init["teacher"]["init_args"] == {"bank_size_per_caption": 16, "spatial_factor": factor, "num_frames": 6}
    assert init["num_frames"] == 6  # the data's length (its index), not the recipe's 12
    assert (init["critic_weights"], init["generator_weights"]) == ("neural.safetensors", "ode.safetensors")
    assert (init["seed"], cfg["seed_everything"]) == (2, 2)
    assert init["generator_lr"] == init["critic_lr"] == 1e-4
    guided = [o["init_args"]["guidance_scale"] for o in init["objectives"] if "guidance_scale" in o.get("init_args", {})]
    assert guided and set(guided) == {1.5}  # every guided objective, none left at the recipe's w
    assert [o["class_path"] for o in init["objectives"]] == [o["class_path"] for o in recipe["model"]["init_args"]["objectives"]]
    for key, value in toy_study.METHODS[method][1].items():
        assert init[key] == value
    assert cfg["trainer"]["max_steps"] == 300 and cfg["trainer"]["plugins"] == recipe["trainer"]["plugins"]
    assert cfg["trainer"]["logger"]["init_args"] == {"save_dir": str(tmp_path / "study" / "runs"), "name": name,
                                                     "version": 0}
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in cfg["trainer"]["callbacks"]}
    assert callbacks["ToyEvaluation"] == {"every_n_steps": 100, "num_videos": 16, "seed": 2, "bank_size": 16}
    assert callbacks["ModelCheckpoint"] == {"save_last": True, "every_n_train_steps": 100}
    assert callbacks["ExportWeights"] == {"dtype": "float16"} and "SampleVideoLogger" not in callbacks
    assert cfg["data"]["init_args"]["batch_size"] == 4 and cfg["data"]["init_args"]["root"] == str(tmp_path / "toy6")


def test_beta1_sets_the_students_adam_betas_and_the_recipes_stay_otherwise(toy_study, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = yaml.safe_load((REPO / toy_study.METHODS["sf_dmd_4step"][0]).read_text())["model"]["init_args"]
    for extra, betas in (((), recipe["betas"]), (("--beta1", "0.9", "--lr", "3e-4"), [0.9, 0.999])):
        study = toy_study.Study(study_args(toy_study, tmp_path, *extra))
        init = yaml.safe_load(study.config_of("sf_dmd_4step", 0, Path("ode.safetensors")).read_text())["model"]["init_args"]
        assert init["betas"] == betas
    assert init["generator_lr"] == init["critic_lr"] == 3e-4


@pytest.mark.parametrize("method, window, first", [("of_framewise_1step", 4, None), ("of_framewise_1step_ffe", 4, 2),
                                                   ("of_chunkwise_1step", None, None), ("of_chunkwise_1step_ffe", None, 3)])
def test_frame_counts_are_scaled_to_the_data_length(toy_study, tmp_path, monkeypatch, method, window, first):
    """A 12-frame recipe's window of 8 and first block of 4 become 4 and 2 on 6-frame data (the module refuses a
    window longer than the video); a method's own first block (3 frames: one chunk) is kept."""
    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path))
    init = yaml.safe_load(study.config_of(method, 0, Path("ode.safetensors")).read_text())["model"]["init_args"]
    assert (init["gradient_window_frames"], init.get("first_block_size")) == (window, first)
    assert toy_study.scaled_to({"num_frames": 12, "gradient_window_frames": 8, "first_block_size": 1}, 12) == {}
    assert toy_study.scaled_to({"num_frames": 12, "gradient_window_frames": 1}, 3) == {"gradient_window_frames": 1}


def test_the_shared_gan_pass_changes_the_one_forcing_runs_only(toy_study, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path, "--shared-gan-pass"))
    objectives = {}
    for method in ("of_framewise_1step", "sf_dmd_1step"):
        cfg = yaml.safe_load(study.config_of(method, 0, Path("ode.safetensors")).read_text())
        objectives[method] = {o["class_path"].rsplit(".", 1)[1]: o["init_args"] for o in cfg["model"]["init_args"]["objectives"]}
    assert objectives["of_framewise_1step"]["DMD"]["train_critic"] is False
    assert objectives["of_framewise_1step"]["GAN"]["shared_flow_pass"] is True
    assert objectives["of_framewise_1step"]["GAN"]["discriminator_update_every"] == 5
    assert "train_critic" not in objectives["sf_dmd_1step"]["DMD"]  # DMD alone keeps its own flow loss


def test_fit_resumes_from_the_last_checkpoint_and_skips_a_trained_run(toy_study, tmp_path, monkeypatch):
    study = toy_study.Study(study_args(toy_study, tmp_path))
    ran = []
    monkeypatch.setattr(study, "run", lambda cmd, log: ran.append(cmd))
    run_dir = tmp_path / "study" / "runs" / "x" / "version_0"
    study.fit("x", Path("x.yaml"))
    assert "--ckpt_path" not in ran[-1]
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    study.fit("x", Path("x.yaml"))
    assert ran[-1][-2:] == ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    (run_dir / "weights.safetensors").write_bytes(b"")
    assert study.fit("x", Path("x.yaml")) == run_dir / "weights.safetensors" and len(ran) == 2


def fake_commands(tmp_path: Path, ran: list):
    """Stands in for the subprocesses: a fit writes its weights and an events file, an evaluation its metrics."""

    def run(cmd, log):
        ran.append(cmd[3])
        if cmd[3] == "fit":
            name = Path(cmd[cmd.index("--config") + 1]).stem
            run_dir = tmp_path / "study" / "runs" / name / "version_0"
            run_dir.mkdir(parents=True, exist_ok=True)
            frames = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text())["model"]["init_args"]["num_frames"]
            save_file({"tag": torch.tensor([float(len(name))])}, str(run_dir / "weights.safetensors"),
                      metadata={"run": name, "hparams": json.dumps({"num_frames": frames})})
            (run_dir / "events.out.tfevents.1.host").write_bytes(b"events")
        elif cmd[3] == "evaluate":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text("{}")
            (out / "samples.safetensors").write_bytes(b"sample tensors")

    return run


def run_of(weights: Path) -> str:
    """The run a fake fit wrote ``weights`` for."""
    with safe_open(str(weights), framework="pt") as f:
        return f.metadata()["run"]


def test_a_finished_run_is_kept_and_a_kept_run_is_not_trained_again(toy_study, tmp_path, monkeypatch):
    """What outlives the working files: config, commands, events and the evaluation in the results; the weights of
    seed 0 only, in the artifacts; no sample tensor among the documents."""
    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path, "--results", str(tmp_path / "kept")))
    ran = []
    monkeypatch.setattr(study, "run", fake_commands(tmp_path, ran))
    for seed in (0, 1):
        kept = study.student("sf_dmd_1step", seed, Path("ode.safetensors"))
        assert kept == tmp_path / "kept" / f"sf_dmd_1step_seed{seed}"
        assert (kept / "metrics.json").is_file() and (kept / "events" / "events.out.tfevents.1.host").is_file()
        assert yaml.safe_load((kept / "config.yaml").read_text())["seed_everything"] == seed
        fit, evaluate = (kept / "command.txt").read_text().splitlines()
        assert fit == f"oneforcing fit --config {kept / 'config.yaml'}"
        assert evaluate.startswith("oneforcing evaluate --checkpoint ")
        assert f"--out {tmp_path / 'study' / 'eval' / kept.name}" in evaluate
        assert not (kept / "samples.safetensors").exists() and not (kept / "weights.safetensors").exists()
    assert run_of(tmp_path / "artifacts" / "sf_dmd_1step_seed0.safetensors") == "sf_dmd_1step_seed0"
    assert not (tmp_path / "artifacts" / "sf_dmd_1step_seed1.safetensors").exists()
    assert ran == ["fit", "evaluate"] * 2
    study.student("sf_dmd_1step", 1, Path("ode.safetensors"))  # kept: nothing runs, even without working files
    assert ran == ["fit", "evaluate"] * 2


def test_a_kept_ode_init_skips_the_trajectories_and_its_training(toy_study, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path, "--results", str(tmp_path / "kept")))
    ran = []
    monkeypatch.setattr(study, "run", fake_commands(tmp_path, ran))
    weights = study.ode_init()
    assert ran == ["data", "data", "fit"]  # train and val trajectories, then the ODE init
    assert run_of(weights) == "ode_init" and weights == tmp_path / "artifacts" / "ode_init.safetensors"
    assert (tmp_path / "kept" / "ode_init" / "config.yaml").is_file()
    assert study.ode_init() == weights and ran == ["data", "data", "fit"]
    (tmp_path / "toy6" / "train" / "index.json").write_text('{"num_frames": 12}')  # other data, same results
    with pytest.raises(SystemExit, match="was trained on 6-frame videos, the data .* holds 12-frame ones"):
        study.ode_init()


def test_learning_curves_pair_the_seeds_step_by_step(toy_study, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    values = {0: {100: 0.5, 200: 0.3}, 1: {100: 0.7, 200: 0.1, 300: 0.0}, 2: {100: 9.0}}  # seed 1 ran further
    for seed, by_step in values.items():
        writer = SummaryWriter(tmp_path / f"sf_dmd_1step_seed{seed}" / "events")
        for step, value in by_step.items():
            writer.add_scalar("eval/bank_precision", value, step)
        writer.close()
        if seed != 2:  # seed 2 trained, not evaluated: not finished, left out like the report's table leaves it
            (tmp_path / f"sf_dmd_1step_seed{seed}" / "metrics.json").write_text("{}")
    curves = toy_study.learning_curves(tmp_path, ["sf_dmd_1step", "consistency_1step"], [0, 1, 2])
    assert list(curves) == ["sf_dmd_1step"]  # a method without runs is left out
    c = curves["sf_dmd_1step"]["bank_precision"]
    assert c["steps"] == [100, 200]
    assert [pytest.approx(v) for v in [[0.5, 0.7], [0.3, 0.1]]] == c["values"]
    toy_study.plot_curves(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_mean_std_is_the_sample_std(toy_study):
    values = [0.2, 0.5, 0.9]
    assert toy_study.mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert toy_study.mean_std([0.4]) == (0.4, 0.0)


def test_every_written_config_parses_under_the_cli(toy_study, tmp_path, monkeypatch, capsys):
    """jsonargparse checks each class_path's init_args against its signature (the exact teacher's included)."""
    from oneforcing.cli import main

    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path))
    paths = []
    monkeypatch.setattr(study, "fit", lambda name, config: paths.append(config) or Path("w"))
    monkeypatch.setattr(study, "run", lambda cmd, log: None)
    monkeypatch.setattr(study, "keep", lambda *args, **kwargs: None)
    monkeypatch.setattr(study, "evaluate", lambda *args: None)
    for method in toy_study.METHODS:
        study.student(method, 0, Path("ode.safetensors"))
    study.ode_init()
    for path in paths:
        argv = ["fit", "--config", str(path), "--print_config"]
        monkeypatch.setattr(sys, "argv", ["oneforcing", *argv])  # the process's own arguments, as from a shell
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code in (0, None), path
        assert "ExactToyTeacher" in capsys.readouterr().out or path.stem == "ode_init"


def test_ode_init_only_stops_after_the_kept_and_evaluated_ode_init(toy_study, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = tmp_path / "toy6"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True, exist_ok=True)
        (data / split / "index.json").write_text('{"num_frames": 6}')
    (tmp_path / "neural.safetensors").write_bytes(b"")
    ran = []
    monkeypatch.setattr(toy_study.Study, "run", lambda self, cmd, log: fake_commands(tmp_path, ran)(cmd, log))
    monkeypatch.setattr(sys, "argv", ["toy_study.py", "--data", str(data), "--teacher", str(tmp_path / "neural.safetensors"),
                                      "--out", str(tmp_path / "study"), "--results", str(tmp_path / "kept"),
                                      "--artifacts", str(tmp_path / "artifacts"), "--ode-init-only"])
    toy_study.main()
    assert ran == ["data", "data", "fit", "evaluate"]  # trajectories, the ODE init, its evaluation; no student
    assert (tmp_path / "kept" / "ode_init" / "metrics.json").is_file()
    toy_study.main()  # kept: nothing runs again
    assert ran == ["data", "data", "fit", "evaluate"]


def test_report_only_reports_the_finished_runs_and_trains_nothing(toy_study, tmp_path, monkeypatch):
    """--report-only: compare over the ODE init and the runs whose evaluation is written, seed-major; none: an error."""
    results = tmp_path / "kept"
    for run in ("ode_init", "sf_dmd_1step_seed0", "sf_dmd_1step_seed1", "consistency_1step_seed0"):
        (results / run).mkdir(parents=True)
        (results / run / "metrics.json").write_text("{}")
    (results / "consistency_1step_seed1").mkdir()  # trained, not evaluated: not finished
    argv = ["toy_study.py", "--results", str(results), "--out", str(tmp_path / "study"), "--report-only",
            "--methods", "sf_dmd_1step", "consistency_1step", "--seeds", "0", "1"]
    reported = []
    monkeypatch.setattr(toy_study.Study, "report", lambda self, targets: reported.append(targets))
    monkeypatch.setattr(toy_study.Study, "run", lambda self, cmd, log: pytest.fail(f"ran {cmd}"))
    monkeypatch.setattr(sys, "argv", argv)
    toy_study.main()  # no data root and no teacher needed
    assert reported == [[results / r for r in ("ode_init", "sf_dmd_1step_seed0", "consistency_1step_seed0",
                                               "sf_dmd_1step_seed1")]]
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "2"])
    with pytest.raises(SystemExit, match=r"No finished run of .* seeds \[2\]"):
        toy_study.main()


def test_claims_count_a_difference_only_beyond_the_seed_spread(toy_study, tmp_path):
    """A − B and its verdict per claim and metric: 'differs' only with ≥ 2 seeds each and |A − B| > std(A) + std(B)."""
    sharpness = {"sf_dmd_1step": [0.30, 0.32], "sf_dmd_4step": [0.20, 0.22],  # 0.10 apart, stds 0.014: differs
                 "of_framewise_1step": [0.31, 0.40], "of_chunkwise_1step": [0.33]}  # spread 0.064 > 0.045 apart
    for method, per_seed in sharpness.items():
        for seed, value in enumerate(per_seed):
            run = tmp_path / f"{method}_seed{seed}"
            run.mkdir()
            (run / "metrics.json").write_text(json.dumps({"label": method, "metrics": {"sharpness_ratio": value}}))
    text = toy_study.claims_table(tmp_path, [0, 1, 2])
    sections = text.split("## ")[1:]
    blur, gan, consistency, chunk = ({line.split(" | ")[0].lstrip("| "): line for line in s.splitlines()
                                      if line.startswith("| ")} for s in sections)
    assert blur["sharpness_ratio"].endswith("| +0.1 | differs |")
    assert "(n=2)" in blur["sharpness_ratio"]
    assert gan["sharpness_ratio"].endswith("| within spread |")  # 0.355 ± 0.064 against 0.31 ± 0.014
    assert chunk["sharpness_ratio"].endswith("| one seed: no spread |")
    assert consistency["dynamics_ratio"].endswith("| not run |")


def test_summary_table_is_the_mean_and_sample_std_of_the_finished_seeds(toy_study, tmp_path):
    """One row per method with its seed count; a method without a finished seed has no row; one seed has no ±."""
    runs = {"ode_init": {"fd": 77.0, "bank_precision": 0.4341},
            "sf_dmd_1step_seed0": {"fd": 40.0, "bank_precision": 0.25}, "sf_dmd_1step_seed2": {"fd": 44.0},
            "sf_dmd_1step_seed3": {"fd": 1000.0},  # not among the seeds asked for
            "of_framewise_1step_seed1": {"fd": 30.0}}
    for run, metrics in runs.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text(json.dumps({"label": run, "metrics": metrics}))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
            for line in toy_study.summary_table(tmp_path, [0, 1, 2]).splitlines()[2:]}
    assert list(rows) == ["ODE init (4 steps, the common start)", "Self-Forcing DMD, 1 step",
                          "One-Forcing framewise, 1 step"]
    assert rows["ODE init (4 steps, the common start)"][:2] == ["1", "77.0"]
    assert rows["ODE init (4 steps, the common start)"][6] == "0.434"
    assert rows["Self-Forcing DMD, 1 step"][:2] == ["2", "42.0 ± 2.8"]  # stdev(40, 44) = 2.83
    assert rows["Self-Forcing DMD, 1 step"][2] == "–"  # no sharpness measured
    assert rows["Self-Forcing DMD, 1 step"][6] == "0.250"  # one seed measured it: no ±
    assert rows["One-Forcing framewise, 1 step"][:2] == ["1", "30.0"]


def test_a_curve_is_flat_only_when_its_last_change_is_within_the_seed_spread(toy_study):
    """Each seed's change over the window, against the std of the last values; one seed or a short run: no verdict."""
    def curve(by_step):
        return {"steps": sorted(by_step), "values": [by_step[s] for s in sorted(by_step)]}

    curves = {"sf_dmd_1step": {"fd": curve({600: [50.0, 52.0], 700: [48.0, 50.0], 1000: [40.0, 44.0]}),  # −7 ± 1.4
                               "bank_coverage": curve({700: [0.15, 0.16], 1000: [0.17, 0.13]})},  # +0.005 ± 2.8e-2
              "of_framewise_1step": {"fd": curve({700: [30.0, 30.0], 1000: [34.0, 34.0]}),  # std 0: +4 rising
                                     "bank_precision": curve({100: [0.3, 0.3], 300: [0.2, 0.2]})},
              "consistency_1step": {"fd": curve({700: [88.0], 1000: [87.0]})}}
    rows = {tuple(line.split(" | ")[:2]): line for line in toy_study.convergence_table(curves).splitlines()
            if line.startswith("| ") and "---" not in line and "method" not in line}
    assert rows[("| sf_dmd_1step", "fd")].endswith("| 700–1000 | 42 ± 2.8 | -7 ± 1.4 | still falling |")
    assert rows[("| sf_dmd_1step", "bank_coverage")].endswith("| flat |")
    assert rows[("| of_framewise_1step", "fd")].endswith("| +4 ± 0 | still rising |")
    assert rows[("| of_framewise_1step", "bank_precision")].endswith("| shorter than 300 |")
    assert rows[("| consistency_1step", "fd")].endswith("| one seed: no spread |")


def test_ode_init_option_starts_from_another_studys_kept_init(toy_study, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    kept = tmp_path / "first" / "ode_init.safetensors"
    args = study_args(toy_study, tmp_path, "--results", str(tmp_path / "long"), "--ode-init", str(kept))
    study = toy_study.Study(args)
    ran = []
    monkeypatch.setattr(study, "run", fake_commands(tmp_path, ran))
    with pytest.raises(SystemExit, match="--ode-init .* does not exist"):
        study.ode_init()  # nothing there: no silent training of a new one
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit, match="is not an exported student"):
        study.ode_init()
    save_file({"w": torch.zeros(1)}, str(kept), metadata={"hparams": json.dumps({"num_frames": 6})})
    assert study.ode_init() == kept and ran == []  # no trajectories, no training
    assert not (tmp_path / "artifacts" / "ode_init.safetensors").exists()


def test_milestones_are_the_curves_every_thousand_iterations(toy_study):
    def curve(by_step):
        return {"steps": sorted(by_step), "values": [by_step[s] for s in sorted(by_step)]}

    curves = {"sf_dmd_1step": {"fd": curve({900: [1.0, 1.0], 1000: [50.0, 52.0], 2000: [40.0, 44.0],
                                            3000: [30.0, 30.0]})},
              "of_framewise_1step": {"fd": curve({1000: [45.0], 1100: [44.0]}),
                                     "attr_colour": curve({1000: [0.5]})}}  # not one of the table's metrics
    lines = toy_study.milestones_table(curves).splitlines()
    assert lines[2] == "| method | metric | seeds | 1000 | 2000 | 3000 |"
    assert lines[4] == "| sf_dmd_1step | fd | 2 | 51 ± 1.4 | 42 ± 2.8 | 30 ± 0 |"
    assert lines[5] == "| of_framewise_1step | fd | 1 | 45 ± 0 | – | – |"  # a shorter run: no later values
    assert len(lines) == 6


def test_causal_settings_reach_the_trajectories_the_ode_init_and_consistency(toy_study, tmp_path, monkeypatch):
    """--trajectory-order autoregressive exports causal trajectories (their own folder), --ode-flavour teacher_forcing
    regresses on them over the clean ODE output, --consistency-teacher causal steps the exact teacher in teacher
    forcing; the defaults keep the earlier study's settings."""
    monkeypatch.chdir(REPO)
    commands = []

    def configs(*extra):
        study = toy_study.Study(study_args(toy_study, tmp_path, *extra))
        monkeypatch.setattr(study, "run", lambda cmd, log: commands.append(cmd) or fake_commands(tmp_path, [])(cmd, log))
        study.ode_init()
        ode = yaml.safe_load((tmp_path / "study" / "configs" / "ode_init.yaml").read_text())
        monkeypatch.setattr(study, "fit", lambda name, config: commands.append(config) or Path("w"))
        monkeypatch.setattr(study, "keep", lambda *args, **kwargs: None)
        monkeypatch.setattr(study, "evaluate", lambda *args: None)
        study.student("consistency_1step", 0, Path("ode.safetensors"))
        cd = yaml.safe_load(commands[-1].read_text())["model"]["init_args"]["objectives"][0]["init_args"]
        return ode, cd

    ode, cd = configs("--trajectory-order", "autoregressive", "--ode-flavour", "teacher_forcing",
                      "--consistency-teacher", "causal", "--results", str(tmp_path / "causal"),
                      "--artifacts", str(tmp_path / "causal_weights"))
    exports = [c for c in commands if isinstance(c, list) and c[3] == "data"]
    assert all(c[c.index("--autoregressive") + 1] == "true" for c in exports)
    assert {Path(c[c.index("--out") + 1]).relative_to(tmp_path / "study").as_posix() for c in exports} == {
        "ode_autoregressive/train", "ode_autoregressive/val"}
    assert ode["model"]["init_args"]["objectives"][0]["init_args"] == {
        "weight": 1.0, "flavour": "teacher_forcing", "clean_context": "ode_output"}
    assert ode["data"]["init_args"]["root"].endswith("ode_autoregressive")
    assert cd["causal_teacher"] is True and cd["teacher_forcing"] is True and cd["ground_truth"] == "ode_output"
    cd_config = yaml.safe_load(commands[-1].read_text())
    assert cd_config["data"]["init_args"]["root"].endswith("ode_autoregressive"), "trained on the causal samples"
    commands.clear()
    ode, cd = configs("--results", str(tmp_path / "joint"), "--artifacts", str(tmp_path / "joint_weights"))
    exports = [c for c in commands if isinstance(c, list) and c[3] == "data"]
    assert all(c[c.index("--autoregressive") + 1] == "false" for c in exports)
    assert ode["model"]["init_args"]["objectives"][0]["init_args"] == {"weight": 1.0, "flavour": "bidirectional"}
    assert "causal_teacher" not in cd
    data = tmp_path / "toy6"
    (data / "val").mkdir(parents=True, exist_ok=True)
    (data / "val" / "index.json").write_text('{"num_frames": 6}')
    monkeypatch.setattr(sys, "argv", ["toy_study.py", "--data", str(data), "--ode-flavour", "teacher_forcing",
                                      "--teacher", "assets/toy_teacher.safetensors"])
    with pytest.raises(SystemExit, match="use --trajectory-order autoregressive"):
        toy_study.main()
    monkeypatch.setattr(sys, "argv", ["toy_study.py", "--data", str(data), "--consistency-teacher", "causal",
                                      "--teacher", "assets/toy_teacher.safetensors"])
    with pytest.raises(SystemExit, match="add --trajectory-order autoregressive"):
        toy_study.main()


def test_dmd_and_consistency_guidance_are_set_apart_from_the_trajectories(toy_study, tmp_path, monkeypatch):
    """--dmd-guidance and --consistency-guidance set each objective's w (the papers' 4 and 3); --guidance-scale stays
    the trajectories' and the default of both."""
    monkeypatch.chdir(REPO)
    study = toy_study.Study(study_args(toy_study, tmp_path, "--dmd-guidance", "4", "--consistency-guidance", "3"))
    written = []
    monkeypatch.setattr(study, "fit", lambda name, config: written.append(config) or Path("w"))
    monkeypatch.setattr(study, "keep", lambda *args, **kwargs: None)
    monkeypatch.setattr(study, "evaluate", lambda *args: None)
    for method in ("sf_dmd_1step", "of_framewise_1step", "consistency_1step"):
        study.student(method, 0, Path("ode.safetensors"))
    guided = [{o["class_path"].rsplit(".", 1)[1]: o["init_args"]["guidance_scale"]
               for o in yaml.safe_load(path.read_text())["model"]["init_args"]["objectives"]
               if "guidance_scale" in o.get("init_args", {})} for path in written]
    assert guided == [{"DMD": 4.0}, {"DMD": 4.0}, {"ConsistencyDistillation": 3.0}]
    assert study.guidance_of("oneforcing.objectives.dmd.DMD") == 4.0
    plain = toy_study.Study(study_args(toy_study, tmp_path, "--guidance-scale", "2"))
    assert plain.guidance_of("oneforcing.objectives.dmd.DMD") == plain.guidance_of(
        "oneforcing.objectives.consistency.ConsistencyDistillation") == 2.0
