"""Causal consistency distillation and SiD against their definitions."""

import pytest
import torch

from conftest import TINY_TOY
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.base import StepContext
from oneforcing.objectives.consistency import ConsistencyDistillation
from oneforcing.objectives.sid import sid_loss

TINY = dict(TINY_TOY)


def test_sid_loss_matches_its_formula_with_a_per_sample_stop_gradient_normaliser():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 2, 2, generator=g, requires_grad=True)
    real, fake = torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 3, 2, 2, 2, generator=g)
    loss = sid_loss(x, real, fake, alpha=0.5)
    norm = (x - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = ((real - fake) * ((real - x) - 0.5 * (real - fake)) / norm).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()  # with real/fake held fixed, dL/dx = -(r - f) / norm / N: the normaliser carries no gradient
    assert torch.allclose(x.grad, -(real - fake) / norm.detach() / x.numel(), atol=1e-6)


def test_consistency_target_is_the_ema_at_the_next_grid_point_without_gradient():
    torch.manual_seed(0)
    cfg = WanConfig(**TINY)
    teacher, student, ema = WanBackbone(cfg), CausalWanBackbone(cfg), CausalWanBackbone(cfg)
    ema.load_state_dict(student.state_dict())
    objective = ConsistencyDistillation(num_grid_steps=8, grid_shift=5.0, guidance_scale=2.0)
    calls = {}
    original = ema.forward_teacher_forcing

    def spy(x, sigma, context, clean):
        calls["ema"] = (x.clone(), sigma.clone(), torch.is_grad_enabled())
        return original(x, sigma, context, clean)

    ema.forward_teacher_forcing = spy
    real = torch.randn(2, 3, 12, 8, 8)
    ctx = StepContext(batch={}, context=torch.randn(2, 5, 46), uncond_context=torch.zeros(2, 5, 46),
                      real_latents=real, models={"generator": student, "generator_ema": ema, "teacher": teacher},
                      rng=torch.Generator().manual_seed(3), iteration=0)
    loss, logs = objective.generator_loss(ctx)
    x_next, sigma_next, grad_enabled = calls["ema"]
    grid = objective.grid
    assert not grad_enabled
    for b in range(2):
        k = int((grid - sigma_next[b, 0]).abs().argmin())
        assert abs(float(grid[k] - sigma_next[b, 0])) < 1e-6 and k >= 1, "the target sits on the grid"
    # reproduce x_σ and the teacher's Euler step from the same random draws
    rng = torch.Generator().manual_seed(3)
    k = torch.randint(0, len(grid) - 1, (2,), generator=rng)
    assert torch.allclose(sigma_next[:, 0], grid[k + 1])
    noise = torch.randn(real.shape, generator=rng)
    s = grid[k].view(2, 1, 1, 1, 1)
    x_sigma = (1 - s) * real + s * noise
    with torch.no_grad():
        both = teacher(torch.cat([x_sigma, x_sigma]), grid[k].repeat(2), torch.cat([ctx.context, ctx.uncond_context]))
        cond, uncond = both.chunk(2)
        expected_next = x_sigma + (grid[k + 1] - grid[k]).view(2, 1, 1, 1, 1) * (uncond + 2.0 * (cond - uncond))
    assert torch.allclose(x_next, expected_next, atol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in ema.parameters()) and student.transformer.proj_out.weight.grad is not None


def test_consistency_config_errors():
    with pytest.raises(ValueError, match="set ema_start"):
        DistillationModule([ConsistencyDistillation()], backbone=TINY, teacher_weights="t", ema_start=None)
    with pytest.raises(ValueError, match="not on the 10-step consistency grid"):
        DistillationModule([ConsistencyDistillation(num_grid_steps=10)], backbone=TINY, teacher_weights="t",
                           denoising_steps=[1000, 750, 500, 250], ema_start=0)


def test_a_causal_teacher_steps_in_teacher_forcing_on_the_students_clean_context():
    """causal_teacher: the target's Euler step is the teacher's teacher-forcing velocity on the ground truth (what
    the student sees), not its joint velocity over the noisy video."""
    torch.manual_seed(0)
    cfg = WanConfig(**TINY)
    student, ema, teacher = CausalWanBackbone(cfg), CausalWanBackbone(cfg), CausalWanBackbone(cfg)
    ema.load_state_dict(student.state_dict())
    seen = {}
    original = teacher.forward_teacher_forcing

    def spy(x, sigma, context, clean):
        seen["clean"], seen["x"] = clean.clone(), x.clone()
        return original(x, sigma, context, clean)

    teacher.forward_teacher_forcing = spy
    real = torch.randn(2, 3, 12, 8, 8)

    def ctx(models):
        return StepContext(batch={}, context=torch.randn(2, 5, 46, generator=torch.Generator().manual_seed(1)),
                           uncond_context=torch.zeros(2, 5, 46), real_latents=real, models=models,
                           rng=torch.Generator().manual_seed(3), iteration=0)

    models = {"generator": student, "generator_ema": ema, "teacher": teacher}
    causal, _ = ConsistencyDistillation(num_grid_steps=8, guidance_scale=2.0, causal_teacher=True).generator_loss(ctx(models))
    assert torch.equal(seen["clean"], torch.cat([real, real])), "CFG's 2B batch sees the ground truth twice"
    seen.clear()
    joint, _ = ConsistencyDistillation(num_grid_steps=8, guidance_scale=2.0).generator_loss(ctx(models))
    assert not seen and not torch.allclose(causal, joint), "the default steps the teacher jointly"
    bidirectional = {**models, "teacher": WanBackbone(cfg)}
    with pytest.raises(TypeError, match="needs a causal teacher.*set causal_teacher: false"):
        ConsistencyDistillation(num_grid_steps=8, causal_teacher=True).generator_loss(ctx(bidirectional))
    with pytest.raises(ValueError, match="set teacher_forcing: true"):
        ConsistencyDistillation(teacher_forcing=False, causal_teacher=True)


def test_ground_truth_from_trajectory_outputs_is_noised_and_forced_on():
    """ground_truth='ode_output': the trajectory's output is the video noised and the clean context of the student,
    the EMA target and a causal teacher; a batch without it is named."""
    torch.manual_seed(0)
    cfg = WanConfig(**TINY)
    student, ema, teacher = CausalWanBackbone(cfg), CausalWanBackbone(cfg), CausalWanBackbone(cfg)
    ema.load_state_dict(student.state_dict())
    cleans = []
    for model in (student, ema, teacher):
        original = model.forward_teacher_forcing
        model.forward_teacher_forcing = (lambda o: lambda x, s, c, clean: cleans.append(clean.clone()) or o(x, s, c, clean))(original)
    output, data = torch.randn(2, 3, 12, 8, 8), torch.randn(2, 3, 12, 8, 8)
    ctx = StepContext(batch={"ode_output": output.half()}, context=torch.randn(2, 5, 46),
                      uncond_context=torch.zeros(2, 5, 46), real_latents=data,
                      models={"generator": student, "generator_ema": ema, "teacher": teacher},
                      rng=torch.Generator().manual_seed(3), iteration=0)
    ConsistencyDistillation(num_grid_steps=8, guidance_scale=1.0, causal_teacher=True,
                            ground_truth="ode_output").generator_loss(ctx)
    assert len(cleans) == 3 and all(torch.equal(c, output.half().float()) for c in cleans)
    ctx.batch = {}
    with pytest.raises(KeyError, match="has no 'ode_output'"):
        ConsistencyDistillation(num_grid_steps=8, ground_truth="ode_output").generator_loss(ctx)
    with pytest.raises(ValueError, match="use 'data' or 'ode_output'"):
        ConsistencyDistillation(ground_truth="bank")
