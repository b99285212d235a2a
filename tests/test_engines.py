"""The FSDP2 engine on 2 CPU processes (gloo) through the real CLI: the same losses as DDP, whole exports, every
toy recipe, exact resume, and injected faults (kill -9 between checkpoints and during a
checkpoint write, a full disk during a write).

Recipes are shrunk as in test_configs (tiny backbone, 6 frames of 16×16), the in-training evaluation to 4 videos;
nothing else changes. Faults come from a callback module put on the subprocess's PYTHONPATH.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import RECIPE_FRAMES, RECIPE_SIZE, REPO_ROOT, SUBPROCESS_ENV, TINY_BACKBONE, describe
from safetensors.torch import load_file

pytestmark = pytest.mark.engines
TOY = REPO_ROOT / "configs" / "toy"
RECIPES = sorted(c for c in TOY.glob("*.yaml") if c.name not in ("teacher.yaml", "feature_net.yaml"))
ONE_FORCING = TOY / "one_forcing_framewise_1step.yaml"
# within 4 iterations: generator steps at 0 and 2, the EMA created at 0 and updated at 2
SCHEDULE = dict(ema_start=0, generator_update_every=2)

FAULTS = '''
import errno, os, signal
import lightning as L
import lightning.pytorch.strategies.model_parallel as model_parallel


class Fault(L.Callback):
    """kill: SIGKILL the whole run (both ranks) before iteration `step` starts (`between`) or halfway through
    writing the checkpoint of iteration `step` (`write`: after the shards, before the swap). disk_full: the
    checkpoint write of iteration `step` fails with ENOSPC on every rank (a shared file system: under DeepSpeed a
    failure on one rank only would stall the others in the engine's save barriers until the process-group timeout)."""

    def __init__(self, kind: str, step: int):
        self.kind, self.step = kind, step

    def setup(self, trainer, pl_module, stage):
        if type(trainer.strategy).__name__ == "DeepSpeedStrategy":
            self.patch_deepspeed(trainer)
            return
        save = model_parallel._distributed_checkpoint_save

        def faulty_save(state, path):
            if trainer.global_step == self.step and self.kind == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            save(state, path)
            if trainer.global_step == self.step and self.kind == "write":
                os.killpg(os.getpgid(0), signal.SIGKILL)

        model_parallel._distributed_checkpoint_save = faulty_save

    def patch_deepspeed(self, trainer):
        from deepspeed.runtime.engine import DeepSpeedEngine

        save = DeepSpeedEngine.save_checkpoint

        def faulty_save(engine, save_dir, *args, **kwargs):
            if trainer.global_step == self.step and self.kind == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device", str(save_dir))
            result = save(engine, save_dir, *args, **kwargs)
            last = list(trainer.strategy.engines.values())[-1]  # the engines exist once training runs
            if trainer.global_step == self.step and self.kind == "write" and engine is last:
                os.killpg(os.getpgid(0), signal.SIGKILL)  # every engine written, trainer.pt and the swap not
            return result

        DeepSpeedEngine.save_checkpoint = faulty_save

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kind == "between" and trainer.global_step == self.step - 1:
            os.killpg(os.getpgid(0), signal.SIGKILL)


class Layout(L.Callback):
    """Writes, per rank, each role's parameter elements and the elements this rank holds of them (a ZeRO-3
    partition and any whole tensor beside it; an FSDP2 shard) to `<log_dir>/layout_rank<r>.json` at the start."""

    def on_train_start(self, trainer, pl_module):
        import json
        from torch.distributed.tensor import DTensor

        def held(p):
            if hasattr(p, "ds_id"):
                return p.ds_tensor.numel() + p.data.numel()
            return p.to_local().numel() if isinstance(p, DTensor) else p.numel()

        layout = {}
        for name in ("generator", "generator_ema", "critic", "teacher"):
            params = list(getattr(pl_module, name).parameters())
            layout[name] = {"total": sum(p.ds_numel if hasattr(p, "ds_id") else p.numel() for p in params),
                            "held": sum(held(p) for p in params), "tensors": len(params),
                            "partitioned": all(hasattr(p, "ds_id") for p in params)}
        with open(os.path.join(trainer.log_dir, f"layout_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(layout, f)


class NaNParts(L.Callback):
    """Rank 0's loss of micro-batch `part` (1-based) of `side` at iteration `iteration` is NaN, for each
    (side, iteration, part) of `faults` (every rank then skips that part: the decision is shared). At the end each
    rank writes the sum of its generator's and critic's weights to `<log_dir>/weights_rank<r>.json`."""

    def __init__(self, faults: list):
        self.faults = {(side, int(iteration), int(part)) for side, iteration, part in faults}
        self.calls = {}

    def on_train_start(self, trainer, pl_module):
        import types

        original = type(pl_module).step_loss

        def step_loss(module, side, *args, **kwargs):
            loss, logs = original(module, side, *args, **kwargs)
            key = (side, int(module.iteration))
            self.calls[key] = self.calls.get(key, 0) + 1
            if trainer.global_rank == 0 and (*key, self.calls[key]) in self.faults:
                loss = loss * float("nan")
            return loss, logs

        pl_module.step_loss = types.MethodType(step_loss, pl_module)

    def on_train_end(self, trainer, pl_module):
        import json

        sums = {name: float(sum(p.detach().double().sum() for p in getattr(pl_module, name).parameters()))
                for name in ("generator", "critic")}
        with open(os.path.join(trainer.log_dir, f"weights_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(sums, f)


class AllReduces(L.Callback):
    """Counts DDP's gradient all-reduces (its communication hook's calls, one per bucket) per training iteration,
    written per rank to `<log_dir>/allreduces_rank<r>.json` at the end."""

    def on_train_start(self, trainer, pl_module):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.counts, self.current = [], 0

        def counting(state, bucket):
            self.current += 1
            return allreduce_hook(None, bucket)

        trainer.strategy.model.register_comm_hook(None, counting)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts.append(self.current)
        self.current = 0

    def on_train_end(self, trainer, pl_module):
        import json

        with open(os.path.join(trainer.log_dir, f"allreduces_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.counts, f)
'''


def shrunk(config: Path, inputs: dict, out: Path, name: str, strategy: str, max_steps: int = 3,
           checkpoint_every: int | None = None, fault: tuple[str, int] | None = None, layout: bool = False,
           allreduces: bool = False, nan_parts: list | None = None, **model_overrides) -> Path:
    """The recipe at tiny sizes on 2 CPU processes, written to ``out/<name>.yaml`` (``layout``: each rank writes
    what it holds of each role's parameters, ``faults.Layout``; ``allreduces``: DDP's gradient all-reduces per
    iteration, ``faults.AllReduces``; ``nan_parts``: (side, iteration, part) losses made NaN on rank 0,
    ``faults.NaNParts``)."""
    recipe = yaml.safe_load(config.read_text())
    trainer, model = recipe["trainer"], recipe["model"]["init_args"]
    trainer.update(accelerator="cpu", devices=2, strategy=strategy, max_steps=max_steps, val_check_interval=max_steps,
                   log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    trainer["logger"]["init_args"].update(save_dir=str(out), name=name)
    callbacks = []
    for callback in trainer["callbacks"]:
        kind = callback["class_path"].rsplit(".", 1)[-1]
        if kind == "ToyEvaluation":
            callback.setdefault("init_args", {}).update(num_videos=4, every_n_steps=100, samples_per_caption=0)
        if kind == "ModelCheckpoint" and checkpoint_every:
            callback["init_args"].update(every_n_train_steps=checkpoint_every, save_top_k=-1)
        callbacks.append(callback)
    if fault:
        callbacks.append({"class_path": "faults.Fault", "init_args": {"kind": fault[0], "step": fault[1]}})
    if layout:
        callbacks.append({"class_path": "faults.Layout"})
    if allreduces:
        callbacks.append({"class_path": "faults.AllReduces"})
    if nan_parts:
        callbacks.append({"class_path": "faults.NaNParts", "init_args": {"faults": [list(f) for f in nan_parts]}})
    trainer["callbacks"] = callbacks
    deep = config.stem.startswith("one_forcing")  # the GAN pools critic blocks 4 and 5
    model.update(backbone={**(model.get("backbone") or {}), **TINY_BACKBONE, "num_layers": 6 if deep else 2},
                 num_frames=RECIPE_FRAMES, frame_size=RECIPE_SIZE)
    if model.get("gradient_window_frames"):
        model["gradient_window_frames"] = 2
    if config.stem.startswith("ode_init"):
        model["generator_weights"] = str(inputs["teacher"])
    elif "teacher_weights" in model or any("DMD" in o["class_path"] or "Consistency" in o["class_path"]
                                           or "SiD" in o["class_path"] for o in model["objectives"]):
        model["teacher_weights"] = str(inputs["teacher6" if deep else "teacher"])
    model.update(model_overrides)
    data = recipe["data"]["init_args"]
    data.update(root=str(inputs["ode" if config.stem.startswith("ode_init") else "toy"]), batch_size=2,
                val_samples=4, num_workers=0)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit(config: Path, tmp_path: Path, *extra: str, timeout: float = 420) -> subprocess.CompletedProcess:
    (tmp_path / "faults.py").write_text(FAULTS)
    env = dict(SUBPROCESS_ENV, PYTHONPATH=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "oneforcing.cli", "fit", "--config", str(config), *extra],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)  # its own process group: a fault's killpg ends only this run


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def one_forcing_runs(recipe_inputs, tmp_path_factory) -> dict[str, Path]:
    """One-Forcing (DMD + GAN: generator, critic, head, EMA, frozen teacher) 4 iterations under DDP and FSDP2."""
    out = tmp_path_factory.mktemp("engines")
    runs = {}
    for engine, strategy in (("ddp", "ddp_find_unused_parameters_true"), ("fsdp2", "fsdp2")):
        config = shrunk(ONE_FORCING, recipe_inputs, out, engine, strategy, max_steps=4, checkpoint_every=2,
                        **SCHEDULE)
        result = fit(config, out)
        assert result.returncode == 0, describe(result)
        runs[engine] = out / engine / "version_0"
    runs["out"] = out
    return runs


def test_fsdp2_logs_the_losses_of_ddp(one_forcing_runs):
    ddp, fsdp2 = scalars(one_forcing_runs["ddp"]), scalars(one_forcing_runs["fsdp2"])
    losses = [t for t in ddp if t.startswith(("generator/", "critic/", "head"))]
    assert {"generator/loss", "critic/loss", "generator/grad_norm", "critic/grad_norm"} <= set(losses)
    for tag in losses:
        assert [s for s, _ in fsdp2[tag]] == [s for s, _ in ddp[tag]], tag
        for (_, a), (_, b) in zip(ddp[tag], fsdp2[tag]):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (tag, a, b)


def test_fsdp2_exports_every_key_of_ddp_with_the_same_weights(one_forcing_runs):
    ddp = load_file(one_forcing_runs["ddp"] / "weights.safetensors")
    fsdp2 = load_file(one_forcing_runs["fsdp2"] / "weights.safetensors")
    assert sorted(fsdp2) == sorted(ddp)
    generator = [k for k in fsdp2 if k.startswith("generator.")]
    ema = [k for k in fsdp2 if k.startswith("generator_ema.")]
    assert len(generator) > 100 and len(ema) == len(generator)  # the reference's EMA export kept 15 of 825 keys
    worst = max(float((fsdp2[k].float() - ddp[k].float()).abs().max()) for k in ddp)
    assert worst < 1e-5, worst


def test_a_sharded_checkpoint_loads_whole_for_sampling_and_export(one_forcing_runs, tmp_path):
    from oneforcing.lightning_modules.checkpoints import load_trained_module

    folder = one_forcing_runs["fsdp2"] / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                                           "meta.pt"]
    module = load_trained_module(folder)
    exported = load_file(one_forcing_runs["fsdp2"] / "weights.safetensors")
    state = module.state_dict()
    assert {k for k in state} <= set(exported)
    assert all(torch.equal(state[k], exported[k]) for k in state)  # the last checkpoint is the end of training
    result = subprocess.run([sys.executable, "-m", "oneforcing.cli", "export", "--checkpoint", str(folder),
                             "--out", str(tmp_path / "w.safetensors")], cwd=REPO_ROOT, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, describe(result)
    assert sorted(load_file(tmp_path / "w.safetensors")) == sorted(exported)


@pytest.mark.parametrize("kill", ["between", "write"])
def test_a_killed_fsdp2_run_resumes_to_the_uninterrupted_weights(kill, one_forcing_runs, recipe_inputs):
    """kill -9 of both ranks before iteration 3 (between the checkpoints of 2 and 4) or during the write of the
    checkpoint of iteration 4; the resumed run reaches the uninterrupted run's weights exactly."""
    out, name = one_forcing_runs["out"], f"killed_{kill}"
    config = shrunk(ONE_FORCING, recipe_inputs, out, name, "fsdp2", max_steps=4, checkpoint_every=2,
                    fault=("between", 3) if kill == "between" else ("write", 4), **SCHEDULE)
    killed = fit(config, out)
    assert killed.returncode == -signal.SIGKILL, describe(killed)
    checkpoints = out / name / "version_0" / "checkpoints"
    last = checkpoints / "last.ckpt"
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 2  # the previous one, intact
    if kill == "write":
        assert [p.name for p in checkpoints.glob("*.partial")] == ["epoch=1-step=4.ckpt.partial"]  # the killed write
    config = shrunk(ONE_FORCING, recipe_inputs, out, name, "fsdp2", max_steps=4, checkpoint_every=2, **SCHEDULE)
    resumed = fit(config, out, "--ckpt_path", str(last))
    assert resumed.returncode == 0, describe(resumed)
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    final = load_file(out / name / "version_1" / "weights.safetensors")
    uninterrupted = load_file(one_forcing_runs["fsdp2"] / "weights.safetensors")
    assert sorted(final) == sorted(uninterrupted)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_a_full_disk_during_a_checkpoint_write_names_the_path_and_keeps_the_last_checkpoint(
        one_forcing_runs, recipe_inputs):
    out = one_forcing_runs["out"]
    config = shrunk(ONE_FORCING, recipe_inputs, out, "disk_full", "fsdp2", max_steps=4, checkpoint_every=2,
                    fault=("disk_full", 4), **SCHEDULE)
    result = fit(config, out)
    assert result.returncode != 0
    checkpoints = out / "disk_full" / "version_0" / "checkpoints"
    assert f"Writing the checkpoint {checkpoints}" in result.stderr and "No space left on device" in result.stderr
    assert f"the other checkpoints in {checkpoints} are untouched" in result.stderr  # a new file: step=4
    assert torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=True)["global_step"] == 2
    assert not list(checkpoints.glob("*.partial"))


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.stem)
def test_toy_recipe_trains_under_fsdp2(config, recipe_inputs, tmp_path):
    result = fit(shrunk(config, recipe_inputs, tmp_path, config.stem, "fsdp2", max_steps=2), tmp_path)
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in output
    exported = load_file(tmp_path / config.stem / "version_0" / "weights.safetensors")
    assert any(k.startswith("generator.") for k in exported)


def test_ddp_reduces_the_gradients_once_per_role_step_however_many_micro_batches(recipe_inputs, tmp_path):
    """micro_batches=2 under DDP: the first part's backward runs inside no_sync, so each iteration all-reduces as
    many buckets as without accumulation (twice as many if every part synced). That the accumulated gradients are
    still DDP's average is test_engines_deepspeed's comparison of the K = 2 losses and norms with FSDP2's."""
    counts = {}
    for parts in (1, 2):
        config = shrunk(ONE_FORCING, recipe_inputs, tmp_path, f"ddp_k{parts}", "ddp_find_unused_parameters_true",
                        max_steps=3, micro_batches=parts, allreduces=True, **SCHEDULE)
        result = fit(config, tmp_path)
        assert result.returncode == 0, describe(result)
        counts[parts] = [json.loads((tmp_path / f"ddp_k{parts}" / "version_0" / f"allreduces_rank{r}.json").read_text())
                         for r in (0, 1)]
    assert counts[2] == counts[1], counts
    first, second, third = counts[1][0]  # generator and critic steps, critic only, generator and critic
    assert first == third > second > 0, counts


def test_a_skipped_last_micro_batch_under_ddp_still_averages_and_training_goes_on(recipe_inputs, tmp_path):
    """micro_batches=2 under DDP with the last part's loss NaN on rank 0 (every rank skips it) in a critic-only
    iteration and then in a generator step: the first part's unsynced gradients are still averaged through DDP (a
    synced zero-loss backward), the reducer's bookkeeping is closed before the other role's step, and both ranks end
    with the same weights."""
    config = shrunk(ONE_FORCING, recipe_inputs, tmp_path, "ddp_nan", "ddp_find_unused_parameters_true", max_steps=4,
                    micro_batches=2, nan_parts=[("critic", 1, 2), ("generator", 2, 2)], **SCHEDULE)
    result = fit(config, tmp_path)
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr
    assert "Non-finite critic loss" in output and "Non-finite generator loss" in output
    rank0, rank1 = (json.loads((tmp_path / "ddp_nan" / "version_0" / f"weights_rank{r}.json").read_text())
                    for r in (0, 1))
    assert rank0 == rank1
