"""The DeepSpeed engine (one ZeRO engine per trainable role) on 2 CPU processes (gloo) through the real CLI: the
same losses as DDP under ZeRO-2 and ZeRO-3, whole exports, every toy recipe, exact resume, and injected
faults (kill -9 between checkpoints and during a checkpoint write, a full disk during a write).

Recipes are shrunk as in test_engines (tiny backbone, 6 frames of 16×16); faults come from a callback module put on
the subprocess's PYTHONPATH.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO_ROOT, SUBPROCESS_ENV, describe
from safetensors.torch import load_file
from test_engines import ONE_FORCING, RECIPES, SCHEDULE, fit, scalars, shrunk

pytestmark = pytest.mark.engines


# ZeRO-3 with every parameter partitioned, as a Wan model's matrices are (at DeepSpeed's default persistence
# threshold of 1e5 elements every tiny test parameter stays whole on every rank beside its partition)
ZERO3_P0 = {"class_path": "oneforcing.engines.deepspeed.DeepSpeedStrategy",
            "init_args": {"stage": 3, "config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}}


@pytest.fixture(scope="module")
def deepspeed_runs(recipe_inputs, tmp_path_factory) -> dict:
    """One-Forcing (DMD + GAN: generator and critic engines; the teacher and the EMA replicated under ZeRO-2,
    partitioned under ZeRO-3) 4 iterations under DDP, ZeRO-2, ZeRO-3 and ZeRO-3 with every parameter partitioned."""
    out = tmp_path_factory.mktemp("deepspeed")
    runs = {}
    for engine, strategy in (("ddp", "ddp_find_unused_parameters_true"), ("zero2", "zero2"), ("zero3", "zero3"),
                             ("zero3_p0", ZERO3_P0)):
        config = shrunk(ONE_FORCING, recipe_inputs, out, engine, strategy, max_steps=4, checkpoint_every=2,
                        layout=engine.startswith("zero"), **SCHEDULE)
        result = fit(config, out)
        assert result.returncode == 0, describe(result)
        runs[engine] = out / engine / "version_0"
    runs["out"] = out
    return runs


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_p0"])
def test_deepspeed_logs_the_losses_of_ddp(stage, deepspeed_runs):
    ddp, zero = scalars(deepspeed_runs["ddp"]), scalars(deepspeed_runs[stage])
    losses = [t for t in ddp if t.startswith(("generator/", "critic/"))]
    assert {"generator/loss", "critic/loss", "generator/grad_norm", "critic/grad_norm"} <= set(losses)
    for tag in losses:
        assert [s for s, _ in zero[tag]] == [s for s, _ in ddp[tag]], tag
        for (_, a), (_, b) in zip(ddp[tag], zero[tag]):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (tag, a, b)


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_p0"])
def test_deepspeed_exports_every_key_of_ddp_with_the_same_weights(stage, deepspeed_runs):
    """The export is the EMA (from iteration 0): under ZeRO-3 updated partition by partition, as DDP's whole."""
    ddp = load_file(deepspeed_runs["ddp"] / "weights.safetensors")
    zero = load_file(deepspeed_runs[stage] / "weights.safetensors")
    assert sorted(zero) == sorted(ddp)
    worst = max(float((zero[k].float() - ddp[k].float()).abs().max()) for k in ddp)
    assert worst < 1e-5, worst


def layouts(run) -> list[dict]:
    return [json.loads((run / f"layout_rank{rank}.json").read_text()) for rank in (0, 1)]


def test_zero3_partitions_the_teacher_and_the_ema_as_the_trained_roles(deepspeed_runs):
    """Every role, the frozen teacher and EMA too, holds half its elements per rank (plus at most one element of
    padding per tensor) when every parameter is partitioned; ZeRO-2 keeps the frozen roles whole on every rank."""
    for layout in layouts(deepspeed_runs["zero3_p0"]):
        for role in ("generator", "generator_ema", "critic", "teacher"):
            sizes = layout[role]
            assert sizes["partitioned"], role
            assert sizes["total"] / 2 <= sizes["held"] <= sizes["total"] / 2 + sizes["tensors"], (role, sizes)
    for layout in layouts(deepspeed_runs["zero3"]):  # the default threshold: partitioned, every tiny tensor whole too
        assert layout["teacher"]["partitioned"] and layout["generator_ema"]["partitioned"]
    for layout in layouts(deepspeed_runs["zero2"]):
        for role in ("generator_ema", "teacher"):
            assert not layout[role]["partitioned"] and layout[role]["held"] == layout[role]["total"], role


def test_a_deepspeed_checkpoint_is_a_folder_that_loads_whole_for_sampling_and_export(deepspeed_runs, tmp_path):
    from oneforcing.lightning_modules.checkpoints import load_trained_module

    folder = deepspeed_runs["zero3"] / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == ["critic", "generator", "trainer.pt"]
    assert len(list((folder / "generator" / "state").glob("*optim_states.pt"))) == 2  # a partition per rank
    module = load_trained_module(folder)
    exported = load_file(deepspeed_runs["zero3"] / "weights.safetensors")
    state = module.state_dict()
    assert {k for k in state} <= set(exported)
    assert all(torch.equal(state[k], exported[k]) for k in state)  # the last checkpoint is the end of training
    result = subprocess.run([sys.executable, "-m", "oneforcing.cli", "export", "--checkpoint", str(folder),
                             "--out", str(tmp_path / "w.safetensors")], cwd=REPO_ROOT, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, describe(result)
    assert sorted(load_file(tmp_path / "w.safetensors")) == sorted(exported)


@pytest.mark.parametrize("kill, engine", [("between", "zero3"), ("write", "zero3"), ("between", "zero3_p0")])
def test_a_killed_deepspeed_run_resumes_to_the_uninterrupted_weights(kill, engine, deepspeed_runs, recipe_inputs):
    """ZeRO-3, kill -9 of both ranks before iteration 3 (between the checkpoints of 2 and 4) or during the write of
    the checkpoint of iteration 4 (every engine written, not the trainer state); the resumed run reaches the
    uninterrupted run's weights exactly. With every parameter partitioned (zero3_p0) the EMA and the teacher are
    saved gathered and loaded back into their partitions."""
    out, name = deepspeed_runs["out"], f"killed_{kill}_{engine}"
    strategy = ZERO3_P0 if engine == "zero3_p0" else "zero3"
    config = shrunk(ONE_FORCING, recipe_inputs, out, name, strategy, max_steps=4, checkpoint_every=2,
                    fault=("between", 3) if kill == "between" else ("write", 4), **SCHEDULE)
    killed = fit(config, out)
    assert killed.returncode == -signal.SIGKILL, describe(killed)
    checkpoints = out / name / "version_0" / "checkpoints"
    last = checkpoints / "last.ckpt"
    assert torch.load(last / "trainer.pt", weights_only=True)["global_step"] == 2  # the previous one, intact
    if kill == "write":
        assert [p.name for p in checkpoints.glob("*.partial")] == ["epoch=1-step=4.ckpt.partial"]  # the killed write
    config = shrunk(ONE_FORCING, recipe_inputs, out, name, strategy, max_steps=4, checkpoint_every=2, **SCHEDULE)
    resumed = fit(config, out, "--ckpt_path", str(last))
    assert resumed.returncode == 0, describe(resumed)
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    final = load_file(out / name / "version_1" / "weights.safetensors")
    uninterrupted = load_file(deepspeed_runs[engine] / "weights.safetensors")
    assert sorted(final) == sorted(uninterrupted)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_a_full_disk_during_a_deepspeed_checkpoint_write_names_the_path_and_keeps_the_last_checkpoint(
        deepspeed_runs, recipe_inputs):
    out = deepspeed_runs["out"]
    config = shrunk(ONE_FORCING, recipe_inputs, out, "disk_full", "zero2", max_steps=4, checkpoint_every=2,
                    fault=("disk_full", 4), **SCHEDULE)
    result = fit(config, out)
    assert result.returncode != 0
    checkpoints = out / "disk_full" / "version_0" / "checkpoints"
    assert f"Writing the checkpoint {checkpoints}" in result.stderr
    assert "rank 0: [Errno 28] No space left on device" in result.stderr and "rank 1: [Errno 28]" in result.stderr
    assert f"the other checkpoints in {checkpoints} are untouched" in result.stderr  # a new file: step=4
    assert torch.load(checkpoints / "last.ckpt" / "trainer.pt", weights_only=True)["global_step"] == 2
    assert not list(checkpoints.glob("*.partial"))


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.stem)
def test_toy_recipe_trains_under_zero3(config, recipe_inputs, tmp_path):
    result = fit(shrunk(config, recipe_inputs, tmp_path, config.stem, "zero3", max_steps=2), tmp_path)
    assert result.returncode == 0, describe(result)
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in result.stdout + result.stderr
    exported = load_file(tmp_path / config.stem / "version_0" / "weights.safetensors")
    assert any(k.startswith("generator.") for k in exported)


def test_every_engine_accumulates_micro_batches_as_ddp_does(recipe_inputs, tmp_path):
    """micro_batches=2 (batch 2 per rank: one sample per micro-batch): several backwards before one step accumulate
    under FSDP2 and DeepSpeed as under DDP."""
    logged = {}
    for engine, strategy in (("ddp", "ddp_find_unused_parameters_true"), ("fsdp2", "fsdp2"), ("zero2", "zero2"),
                             ("zero3", "zero3")):
        config = shrunk(ONE_FORCING, recipe_inputs, tmp_path, engine, strategy, max_steps=3, micro_batches=2,
                        **SCHEDULE)
        result = fit(config, tmp_path)
        assert result.returncode == 0, describe(result)
        logged[engine] = scalars(tmp_path / engine / "version_0")
    ddp = logged["ddp"]
    for engine in ("fsdp2", "zero2", "zero3"):
        for tag in ("generator/loss", "generator/grad_norm", "critic/loss", "critic/grad_norm"):
            assert [s for s, _ in logged[engine][tag]] == [s for s, _ in ddp[tag]], tag
            for (_, a), (_, b) in zip(ddp[tag], logged[engine][tag]):
                assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (engine, tag, a, b)


def test_activation_checkpointing_keeps_the_losses_under_every_engine(deepspeed_runs, recipe_inputs, tmp_path):
    """Generator and critic blocks recomputed in backward (the critic frozen inside the generator step's GAN loss:
    the ZeRO-3 + checkpoint + frozen-parameter case) log the losses of the plain DDP run."""
    ddp = scalars(deepspeed_runs["ddp"])
    for engine, strategy in (("ddp", "ddp_find_unused_parameters_true"), ("fsdp2", "fsdp2"), ("zero3", "zero3")):
        config = shrunk(ONE_FORCING, recipe_inputs, tmp_path, engine, strategy, max_steps=4,
                        activation_checkpointing=["generator", "critic"], **SCHEDULE)
        result = fit(config, tmp_path)
        assert result.returncode == 0, describe(result)
        logged = scalars(tmp_path / engine / "version_0")
        for tag in ("generator/loss", "generator/grad_norm", "critic/loss", "critic/grad_norm"):
            for (_, a), (_, b) in zip(ddp[tag], logged[tag], strict=True):
                assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (engine, tag, a, b)


@pytest.mark.parametrize("strategy", ["zero2_bf16", "zero3_bf16", "fsdp2_bf16"])
def test_bf16_engines_train_on_the_cpu_near_the_fp32_losses(strategy, deepspeed_runs, recipe_inputs, tmp_path):
    """bf16 parameters (fp32 master weights) with bf16 autocast: the first iterations' losses within 3 % of fp32's."""
    config = shrunk(ONE_FORCING, recipe_inputs, tmp_path, strategy, strategy, max_steps=2, **SCHEDULE)
    recipe = yaml.safe_load(config.read_text())
    recipe["trainer"]["precision"] = "bf16-mixed"
    config.write_text(yaml.safe_dump(recipe))
    result = fit(config, tmp_path)
    assert result.returncode == 0, describe(result)
    fp32, bf16 = scalars(deepspeed_runs["ddp"]), scalars(tmp_path / strategy / "version_0")
    for tag in ("generator/loss", "critic/loss"):
        for (_, a), (_, b) in zip(fp32[tag], bf16[tag]):  # the bf16 run's 2 iterations
            assert abs(a - b) <= 0.03 * abs(a), (tag, a, b)
