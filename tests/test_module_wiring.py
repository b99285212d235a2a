"""DistillationModule's wiring from its settings to what runs: the roll-out's arguments, the side's objectives, the
micro-batch split, the roles' layout and trainability, the exported weights, the trajectory-data and objective
checks (fast: tiny backbone, one process; each found by mutation testing, docs/mutation_testing.md)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

import oneforcing.lightning_modules.distillation as distillation
from oneforcing.lightning_modules.micro_batches import split_batch
from oneforcing.objectives.base import Objective
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.trajectory import TrajectoryDistillation
from tests.test_distillation_module import make_module


def contexts(module, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch_size, module.text_encoder.context_length, module.backbone_config.text_dim)
    return torch.zeros(shape), torch.ones(shape)


def test_the_rollout_gets_the_module_s_schedule_window_and_settings(teacher_file, monkeypatch):
    module = make_module(teacher_file, [DMD(guidance_scale=2.0)], gradient_window_frames=2, context_sigma=0.05,
                         cache_gradient=True, denoising_steps=[1000, 500], first_block_size=2,
                         first_block_steps=[1000, 750, 500, 250])
    module.configure_model()
    calls = []

    def rollout(*args, **kwargs):
        calls.append((args, kwargs, torch.is_grad_enabled()))
        return "roll-out"

    monkeypatch.setattr(distillation, "self_forcing_rollout", rollout)
    context, uncond = contexts(module)
    draws = []
    ctx = module._step_context({"caption": ["a"] * 2}, context, uncond, draws)
    assert ctx.context is context and ctx.uncond_context is uncond
    assert ctx.rollout_fn(True) == "roll-out" and ctx.rollout_fn(False) == "roll-out"
    (args, kwargs, grad_on), (_, no_grad_kwargs, no_grad_on) = calls
    generator, ctx_context, _, frames, _, steps, exit_index, first_steps, first_exit, window = args
    assert generator is module.generator and ctx_context is context and frames == 4
    assert steps == module.step_sigmas and len(steps) == 2
    assert first_steps == module.first_block_sigmas and len(first_steps) == 4
    assert torch.equal(window, torch.tensor([False, False, True, True]))  # the last 2 of 4 frames
    assert kwargs == {"grad": True, "context_sigma": 0.05, "cache_gradient": True} and grad_on
    assert no_grad_kwargs["grad"] is False and not no_grad_on
    assert 0 <= exit_index < 2 and 0 <= first_exit < 4 and draws[0] == (exit_index, first_exit) and len(draws) == 2
    # a later micro-batch of the same step reads the same draws
    module._step_context({"caption": ["a"] * 2}, context, uncond, draws).rollout_fn(True)
    assert calls[2][0][6] == exit_index and calls[2][0][8] == first_exit and len(draws) == 2


def test_each_side_sums_its_own_objectives_on_the_step_s_draws(teacher_file):
    module = make_module(teacher_file, [DMD(guidance_scale=2.0), CausalDiffusion()])
    assert module.critic_objectives != module.generator_objectives  # CausalDiffusion has no critic loss
    seen = []
    module._sum_losses = lambda objectives, ctx, side: seen.append((objectives, ctx, side)) or (0.0, {})
    step_context = module._step_context
    module._step_context = lambda batch, context, uncond, draws: (seen.append(draws), step_context(batch, context,
                                                                                                    uncond, draws))[1]
    draws = [(0, None)]
    for side in ("critic", "generator"):
        module.step_loss(side, {"caption": ["a"]}, None, None, draws)
    assert seen[0] is draws and seen[1][0] == module.critic_objectives and seen[1][2] == "critic"
    assert seen[2] is draws and seen[3][0] == module.generator_objectives and seen[3][2] == "generator"


def test_micro_batches_split_every_per_sample_member_and_keep_per_batch_ones():
    batch = {"caption": ["a", "b", "c", "d"], "index": torch.arange(4), "latents": torch.arange(8.0).view(4, 2),
             "num_skipped": torch.tensor(3), "source": "shards"}
    first, second = split_batch(batch, 2)
    assert first["caption"] == ["a", "b"] and second["caption"] == ["c", "d"]
    assert first["index"].tolist() == [0, 1] and second["index"].tolist() == [2, 3]  # 1-D per-sample tensors too
    assert torch.equal(second["latents"], batch["latents"][2:])
    assert first["num_skipped"] is batch["num_skipped"] and second["source"] == "shards"


def test_the_roles_are_built_with_the_block_layout_and_only_the_trained_ones_trainable(teacher_file):
    module = make_module(teacher_file, block_size=3, first_block_size=1, ema_start=0)
    module.configure_model()
    assert (module.generator.block_size, module.generator.first_block_size) == (3, 1)
    assert all(p.requires_grad for p in module.generator.parameters())
    assert all(p.requires_grad for p in module.critic.parameters())
    assert not any(p.requires_grad for p in module.teacher.parameters()) and not module.teacher.training
    assert not any(p.requires_grad for p in module.generator_ema.parameters())


def test_the_exported_generator_weights_are_the_ema_s_by_default(teacher_file):
    module = make_module(teacher_file, ema_start=0)
    module.configure_model()
    with torch.no_grad():
        for p in module.generator_ema.parameters():
            p.fill_(0.5)
    module.ema_initialised.fill_(True)
    ema, raw = module.generator_weights(), module.generator_weights(use_ema=False)
    assert all(torch.all(ema[k] == 0.5) for k, _ in module.generator_ema.named_parameters())
    assert all(torch.equal(raw[k], p) for k, p in module.generator.named_parameters())


def trajectory_module(teacher_file):
    return make_module(None, [TrajectoryDistillation()], denoising_steps=[1000, 750, 500, 250],
                       generator_update_every=1, ema_start=None)


def test_trajectory_data_is_checked_only_against_a_shard_index(teacher_file):
    module = trajectory_module(teacher_file)
    module._trainer = SimpleNamespace(datamodule=object())  # plain dataloaders: no shard index
    module.on_fit_start()
    assert module.objectives[0].check_data(None, module.view()) == []


def test_trajectory_snapshots_off_the_student_s_steps_are_refused_with_both_lists(teacher_file):
    module = trajectory_module(teacher_file)
    snapshots = [1.0, 0.938, 0.833333, 0.6251]
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_index={"snapshot_sigmas": snapshots}))
    steps = [round(s, 4) for s in module.step_sigmas]
    with pytest.raises(ValueError) as error:
        module.on_fit_start()
    assert str(error.value) == (
        "The training data do not fit the objectives:\n  - "
        f"The trajectory snapshots σ=[1.0, 0.938, 0.8333, 0.6251] do not match the student's steps σ={steps}; set "
        "denoising_steps to the nominal steps the trajectories were exported with (e.g. [1000, 750, 500, 250]) and "
        "the same warp_shift.")
    module._trainer.datamodule.train_index = {"snapshot_sigmas": list(module.step_sigmas)}
    module.on_fit_start()  # the student's own steps pass


class UnknownRoles(Objective):
    roles: ClassVar[tuple[str, ...]] = ("generator", "oracle", "bogus")

    def generator_loss(self, ctx):
        return torch.zeros(()), {}


def test_an_objective_with_unknown_roles_is_refused_by_name(teacher_file):
    with pytest.raises(ValueError) as error:
        make_module(teacher_file, [UnknownRoles()])
    assert "  - UnknownRoles declares unknown roles ['bogus', 'oracle']" in str(error.value).splitlines()
