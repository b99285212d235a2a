"""The wiring of every objective, the roll-out and the streaming sampler, checked against hand-written replays.

Stub models (tests/stubs.py) return known functions of their inputs and record every call, so each test
knows what σ and input each call must see and what the loss, gradient or sample must then be. The
expected values are computed here from the formulas, never by the code under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TOY
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.discriminator import DiscriminatorHead
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.base import StepContext
from oneforcing.objectives.consistency import ConsistencyDistillation
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.gan import GAN
from oneforcing.objectives.rollout import Rollout, gradient_window, self_forcing_rollout
from oneforcing.objectives.sid import SiD
from oneforcing.objectives.timesteps import sample_score_sigma
from oneforcing.objectives.trajectory import TrajectoryDistillation
from oneforcing.sampling import streaming
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators
from tests.stubs import RecordingNoise, StubCausal, StubFullSequence, StubScore, per_sample

B, NF, C, H, W = 3, 4, 2, 3, 3
TINY = dict(TINY_TOY)
OFFSET = 5.0  # latents far from 0: noising at one σ and reading at another moves the recovered ε by ~OFFSET


def latents(seed: int, offset: float = OFFSET, shape=(B, NF, C, H, W), grad: bool = False) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.5 + offset
    return x.requires_grad_(grad)


def contexts(seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 5, 8, generator=g) + 1.0, torch.randn(B, 5, 8, generator=g) - 1.0  # cond, uncond


def context_for(x: torch.Tensor, models: dict, grad_frames: torch.Tensor | None = None, real=None, seed: int = 11,
                batch: dict | None = None) -> StepContext:
    cond, uncond = contexts()
    frames = torch.ones(x.shape[1], dtype=torch.bool) if grad_frames is None else grad_frames
    return StepContext(batch=batch or {}, context=cond, uncond_context=uncond, real_latents=real, models=models,
                       rng=torch.Generator().manual_seed(seed), iteration=0,
                       rollout_fn=lambda grad: Rollout(x if grad else x.detach(), frames, 0, 0))


def recovered_noise(x_sigma: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ε such that x_σ = (1 − σ)·x + σ·ε, with the σ the model was *queried* at."""
    s = per_sample(sigma, x)
    return (x_sigma - (1 - s) * x) / s


def assert_standard_normal(eps: torch.Tensor) -> None:
    assert abs(float(eps.mean())) < 0.25 and abs(float(eps.std()) - 1) < 0.25, \
        "the model was queried at another σ than the sample was noised at (or on an un-noised sample)"


# --- DMD -------------------------------------------------------------------------------------------------
def test_dmd_generator_gradient_is_fake_minus_real_over_the_normaliser_on_the_window_frames_only():
    teacher, critic = StubScore(a=0.5, b=0.2, c=1.0), StubScore(a=-0.3, b=0.7, c=0.4)
    x = latents(0, grad=True)
    window = torch.tensor([False, True, False, True])
    w = 3.0
    loss, _ = DMD(guidance_scale=w).generator_loss(context_for(x, {"teacher": teacher, "critic": critic}, window))
    loss.backward()
    (fake_call,), (teacher_call,) = critic.calls, teacher.calls
    x_sigma, sigma = fake_call["x"], fake_call["sigma"]
    cond, uncond = contexts()
    assert sigma.shape == (B,) and bool(((sigma >= 0.02 - 1e-6) & (sigma <= 0.98 + 1e-6)).all())
    assert_standard_normal(recovered_noise(x_sigma, x.detach(), sigma))
    # the teacher sees the same x_σ at the same σ, conditional half first
    assert torch.equal(teacher_call["x"], torch.cat([x_sigma, x_sigma]))
    assert torch.equal(teacher_call["sigma"], torch.cat([sigma, sigma]))
    assert torch.equal(teacher_call["context"], torch.cat([cond, uncond]))
    s = per_sample(sigma, x)
    v_cond, v_uncond = teacher.expected(x_sigma, sigma, cond), teacher.expected(x_sigma, sigma, uncond)
    real = x_sigma - s * (v_uncond + w * (v_cond - v_uncond))
    fake = x_sigma - s * critic.expected(x_sigma, sigma, cond)
    normaliser = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    n_window = B * int(window.sum()) * C * H * W
    expected = (fake - real) / normaliser / n_window
    assert torch.allclose(x.grad[:, window], expected[:, window], rtol=1e-4, atol=1e-8)
    assert torch.equal(x.grad[:, ~window], torch.zeros_like(x.grad[:, ~window])), "frames outside the window"
    assert teacher.a.grad is None and critic.a.grad is None, "the score networks carry no gradient in DMD"


def test_dmd_critic_loss_is_the_flow_loss_at_the_sigma_its_sample_was_noised_at():
    critic = StubScore(a=-0.3, b=0.7, c=0.4)
    x = latents(1)
    loss, _ = DMD(critic_timestep_shift=3.0).critic_loss(context_for(x, {"critic": critic}))
    (call,) = critic.calls
    x_sigma, sigma = call["x"], call["sigma"]
    eps = recovered_noise(x_sigma, x, sigma)
    assert_standard_normal(eps)
    v = critic.expected(x_sigma, sigma, contexts()[0])
    assert torch.allclose(loss, (v - (eps - x)).square().mean(), rtol=1e-5)
    loss.backward()
    assert critic.a.grad is not None and critic.a.grad.abs() > 0


def test_sid_generator_loss_and_its_gradient_through_both_score_networks():
    teacher, critic = StubScore(a=0.5, b=0.2, c=1.0), StubScore(a=-0.3, b=0.7, c=0.4)
    x = latents(2, grad=True)
    alpha, w = 0.7, 2.5
    loss, _ = SiD(alpha=alpha, guidance_scale=w).generator_loss(context_for(x, {"teacher": teacher, "critic": critic}))
    loss.backward()
    x_sigma, sigma = critic.calls[0]["x"], critic.calls[0]["sigma"]
    eps = recovered_noise(x_sigma, x.detach(), sigma)
    assert_standard_normal(eps)
    cond, uncond = contexts()

    def by_hand(x_in):
        s = per_sample(sigma, x_in)
        xs = (1 - s) * x_in + s * eps  # the gradient reaches x through x_σ as well
        vc, vu = (StubScore.velocity(teacher.a.detach(), teacher.b, teacher.c, xs, sigma, c) for c in (cond, uncond))
        r = xs - s * (vu + w * (vc - vu))
        f = xs - s * StubScore.velocity(critic.a.detach(), critic.b, critic.c, xs, sigma, cond)
        norm = (x_in - r).abs().mean(dim=(1, 2, 3, 4), keepdim=True).detach()
        return ((r - f) * ((r - x_in) - alpha * (r - f)) / norm).mean()

    x_ref = x.detach().clone().requires_grad_(True)
    expected = by_hand(x_ref)
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-9)


# --- GAN -------------------------------------------------------------------------------------------------
def recording_scores(monkeypatch, weights: torch.Tensor) -> list:
    calls = []

    def scores(self, ctx, x, sigma, context):
        calls.append({"x": x.detach().clone(), "sigma": sigma.clone(), "context": context.clone()})
        return (x * weights).flatten(1).sum(1) / x[0].numel(), None

    monkeypatch.setattr(GAN, "scores", scores)
    return calls


@pytest.mark.parametrize("relativistic", [False, True])
def test_gan_generator_loss_scores_the_noised_sample(monkeypatch, relativistic):
    weights = torch.randn(NF, C, H, W, generator=torch.Generator().manual_seed(5))
    calls = recording_scores(monkeypatch, weights)
    fake, real = latents(3, grad=True), latents(4, offset=-OFFSET)
    gan = GAN(feature_layers=[0], num_registers=1, relativistic=relativistic, critic_timestep_shift=3.0)
    ctx = context_for(fake, {}, real=real)
    loss, _ = gan.generator_loss(ctx)
    (call,) = calls
    sigma = sample_score_sigma(B, torch.Generator().manual_seed(11), 3.0)  # the critic's σ draw, its own shift
    halves = 2 if relativistic else 1
    assert torch.equal(call["sigma"], sigma.repeat(halves))
    assert torch.equal(call["context"], ctx.context.repeat(halves, 1, 1))
    D = lambda v: (v * weights).flatten(1).sum(1) / v[0].numel()  # noqa: E731
    if relativistic:
        xf, xr = call["x"].chunk(2)
        sf, sr = call["sigma"].chunk(2)
        assert torch.equal(sf, sr)
        assert_standard_normal(recovered_noise(xr, real, sr))
        expected = F.softplus(-(D(xf) - D(xr))).mean()
    else:
        xf, sf = call["x"], call["sigma"]
        expected = F.softplus(-D(xf)).mean()
    assert_standard_normal(recovered_noise(xf, fake.detach(), sf))
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_gan_relativistic_critic_loss_pairs_real_against_fake(monkeypatch):
    weights = torch.randn(NF, C, H, W, generator=torch.Generator().manual_seed(6))
    calls = recording_scores(monkeypatch, weights)
    fake, real = latents(3), latents(4, offset=-OFFSET)
    terms, logs = GAN(feature_layers=[0], num_registers=1, relativistic=True).critic_loss(context_for(fake, {}, real=real))
    xf, xr = calls[0]["x"].chunk(2)
    D = lambda v: (v * weights).flatten(1).sum(1) / v[0].numel()  # noqa: E731
    assert set(terms) == {"gan_d"} and torch.allclose(terms["gan_d"], F.softplus(-(D(xr) - D(xf))).mean(), rtol=1e-5)
    assert torch.allclose(logs["gan_real_logit"], D(xr).mean()) and torch.allclose(logs["gan_fake_logit"], D(xf).mean())


def test_discriminator_head_pools_the_configured_layers_in_register_order():
    torch.manual_seed(0)
    critic = WanBackbone(WanConfig(**TINY))
    head = DiscriminatorHead(24, 2, [1, 0], 2, ffn_dim=16, num_heads=2)
    g = torch.Generator().manual_seed(1)
    x, sigma, context = torch.randn(2, 3, 12, 8, 8, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 46, generator=g)
    features = {}
    hooks = [critic.transformer.blocks[i].register_forward_hook(
        lambda m, a, out, i=i: features.__setitem__(i, out)) for i in (0, 1)]
    logits, velocity = head(critic, x, sigma, context)
    for hook in hooks:
        hook.remove()
    registers = head.register_norm(head.registers)
    pooled = [head.pools[0](registers[0], features[1]), head.pools[1](registers[1], features[0])]
    assert torch.allclose(logits, head.logit(torch.cat(pooled, dim=-1)), atol=1e-6)
    assert torch.allclose(velocity, critic(x, sigma, context), atol=1e-6), "the velocity of the same pass"


# --- the roll-out and the streaming sampler ----------------------------------------------------------
def replay(model: StubCausal, draws: list[torch.Tensor], layout, schedule, context_sigma: float = 0.0) -> list[dict]:
    """The calls a roll-out or sampler must make, given its noise draws in order (the design's recursion)."""
    from tests.stubs import StubCache

    cache, calls, outputs, draw = StubCache(), [], [], iter(draws)
    for b, (start, n) in enumerate(layout.blocks):
        sigmas, exit_at, with_grad = schedule(b, start, n)
        x = next(draw)
        for i, sigma in enumerate(sigmas[: exit_at + 1]):
            calls.append({"offset": start, "x": x, "sigma": sigma, "grad": with_grad and i == exit_at})
            x0 = x - sigma * model.velocity(x, cache, start).detach()
            if i < exit_at:
                x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * next(draw)
        clean = x0 if context_sigma == 0 else (1 - context_sigma) * x0 + context_sigma * next(draw)
        calls.append({"offset": start, "x": clean, "sigma": context_sigma, "grad": False})
        cache.context_inputs[start] = clean
        outputs.append(x0)
    return calls + [{"outputs": torch.cat(outputs, dim=1)}]


def assert_calls_match(recorded: list[dict], expected: list[dict]) -> None:
    assert [(c["offset"], round(float(c["sigma"].flatten()[0]), 5), c["grad"]) for c in recorded] == \
        [(c["offset"], round(float(c["sigma"]), 5), c["grad"]) for c in expected]
    for got, want in zip(recorded, expected):
        assert torch.allclose(got["x"], want["x"], atol=1e-5), f"input of the call at frame {want['offset']}, σ={want['sigma']}"
        assert bool((got["sigma"] == got["sigma"].flatten()[0]).all())


@pytest.mark.parametrize("exit_index,context_sigma", [(0, 0.0), (2, 0.0), (3, 0.3)])
def test_rollout_makes_the_calls_the_schedule_says(exit_index, context_sigma):
    model = StubCausal(block_size=1, first_block_size=2, context_sigma=context_sigma)
    sigmas, first = [1.0, 0.9375, 0.8333, 0.625], [1.0, 0.75]
    window = gradient_window(5, 2)
    noise = RecordingNoise(seed=1)
    rollout = self_forcing_rollout(model, torch.zeros(2, 3, 4), noise, 5, (C, H, W), sigmas, exit_index,
                                   first_block_sigmas=first, first_exit_index=1, window=window, grad=True,
                                   context_sigma=context_sigma)
    expected = replay(model, noise.draws, model.layout(5),
                      lambda b, start, n: (first, 1, bool(window[start:start + n].any())) if b == 0
                      else (sigmas, exit_index, bool(window[start:start + n].any())), context_sigma)
    assert_calls_match(model.calls, expected[:-1])
    assert torch.allclose(rollout.latents.detach(), expected[-1]["outputs"], atol=1e-5)
    assert rollout.grad_frames.tolist() == window.tolist()


def test_streaming_sampler_renoises_between_steps_and_refreshes_the_cache_with_the_clean_block(monkeypatch):
    model = StubCausal(block_size=1, first_block_size=2)
    draws = []
    original = streaming.draw_noise

    def recording(generators, shape, device):
        noise = original(generators, shape, device)
        draws.append(noise.clone())
        return noise

    monkeypatch.setattr(streaming, "draw_noise", recording)
    sigmas, first = [1.0, 0.8333], [1.0, 0.9375, 0.8333, 0.625]
    video = StreamingSampler(model, sigmas, first_block_sigmas=first).sample(
        torch.zeros(2, 3, 4), 4, (C, H, W), per_prompt_generators(0, 2))
    expected = replay(model, draws, model.layout(4),
                      lambda b, start, n: (first, 3, False) if b == 0 else (sigmas, 1, False))
    assert_calls_match(model.calls, expected[:-1])
    assert torch.allclose(video, expected[-1]["outputs"], atol=1e-5)


def test_the_exit_step_is_drawn_alike_on_every_rank_while_the_noise_differs(monkeypatch):
    from oneforcing.lightning_modules import distillation

    seen = []
    monkeypatch.setattr(distillation, "self_forcing_rollout",
                        lambda *args, **kwargs: seen.append((args[6], args[8])))
    draws = {}
    for rank in (0, 1):
        module = DistillationModule([DMD()], backbone=TINY, teacher_weights="t", num_frames=5, frame_size=16,
                                    block_size=1, first_block_size=2, denoising_steps=[1000, 750, 500, 250],
                                    first_block_steps=[1000, 500], seed=4)
        module.randomness.seed(rank)
        seen.clear()
        for _ in range(12):
            module._step_context({}, torch.zeros(1, 2, 46), torch.zeros(1, 2, 46)).rollout(True)
        draws[rank] = (list(seen), torch.randn(3, generator=module.rank_rng))
    assert draws[0][0] == draws[1][0], "ranks drew different exit steps"
    assert len({e for e, _ in draws[0][0]}) > 1 and len({f for _, f in draws[0][0]}) > 1, "the exit step is random"
    assert not torch.equal(draws[0][1], draws[1][1]), "ranks share their noise"


# --- trajectory, diffusion and consistency objectives -------------------------------------------------
@pytest.mark.parametrize("flavour,clean_context", [("bidirectional", "ground_truth"), ("teacher_forcing", "ground_truth"),
                                                   ("teacher_forcing", "ode_output")])
def test_trajectory_loss_regresses_the_snapshot_prediction_onto_the_ode_output(flavour, clean_context):
    generator = StubFullSequence(block_size=2)
    K = 3
    g = torch.Generator().manual_seed(0)
    trajectory = torch.randn(B, K, NF, C, H, W, generator=g)
    snapshot_sigmas = torch.tensor([1.0, 0.9, 0.7]).repeat(B, 1)
    ode_output, real = torch.randn(B, NF, C, H, W, generator=g), torch.randn(B, NF, C, H, W, generator=g)
    batch = {"trajectory": trajectory, "trajectory_sigmas": snapshot_sigmas, "ode_output": ode_output}
    loss, _ = TrajectoryDistillation(flavour=flavour, clean_context=clean_context).generator_loss(
        context_for(ode_output, {"generator": generator}, real=real, batch=batch))
    clean = ode_output if clean_context == "ode_output" else real
    (call,) = generator.calls
    x, sigma = call["x"], call["sigma"]  # (B, F, ...), (B, F)
    index = (sigma[..., None] - snapshot_sigmas[:, None, :]).abs().argmin(-1)  # (B, F) snapshot of each frame
    for b in range(B):
        for f in range(NF):
            assert torch.equal(x[b, f], trajectory[b, index[b, f], f])
    if flavour == "bidirectional":
        assert torch.equal(index[:, 0], index[:, 1]) and torch.equal(index[:, 2], index[:, 3]), "one index per block"
        assert bool((index[:, 0] != index[:, 2]).any()), "each block draws its own snapshot (not one per sample)"
        v = generator.expected(x, sigma, contexts()[0])
    else:
        assert bool((index == index[:, :1]).all()), "one index for every frame"
        assert torch.equal(call["clean"], clean)
        v = generator.expected_teacher_forcing(x, sigma, contexts()[0], clean)
    prediction = x - per_sample(sigma, x) * v
    assert torch.allclose(loss, (prediction - ode_output).square().mean(), rtol=1e-5)


@pytest.mark.parametrize("flavour", ["bidirectional", "teacher_forcing"])
def test_trajectory_snapshots_are_drawn_from_the_step_s_generator_only(flavour):
    """The snapshot draw comes from ctx.rng (checkpointed, per rank), not torch's global generator: the same ctx seed
    gives the same loss whatever the global state, another seed another one."""
    g = torch.Generator().manual_seed(0)
    batch = {"trajectory": torch.randn(B, 4, NF, C, H, W, generator=g),
             "trajectory_sigmas": torch.tensor([1.0, 0.9, 0.7, 0.5]).repeat(B, 1),
             "ode_output": torch.randn(B, NF, C, H, W, generator=g)}
    real = torch.randn(B, NF, C, H, W, generator=g)

    def loss(ctx_seed: int, global_seed: int) -> float:
        torch.manual_seed(global_seed)
        ctx = context_for(batch["ode_output"], {"generator": StubFullSequence(block_size=2)}, real=real, batch=batch,
                          seed=ctx_seed)
        return float(TrajectoryDistillation(flavour=flavour).generator_loss(ctx)[0])

    assert loss(11, 0) == loss(11, 1) == loss(11, 2)
    assert len({loss(seed, 0) for seed in range(6)}) > 1


def test_trajectory_clean_context_is_validated_against_the_flavour_and_the_data():
    with pytest.raises(ValueError, match="'ground_truth' or 'ode_output'"):
        TrajectoryDistillation(flavour="teacher_forcing", clean_context="teacher")
    with pytest.raises(ValueError, match="applies to flavour='teacher_forcing' only"):
        TrajectoryDistillation(clean_context="ode_output")
    autoregressive = {"kind": "trajectories", "order": "autoregressive", "snapshot_sigmas": [1.0, 0.5]}
    (problem,) = TrajectoryDistillation(flavour="teacher_forcing").check_data(autoregressive)
    assert "set clean_context: ode_output" in problem
    assert TrajectoryDistillation(flavour="teacher_forcing", clean_context="ode_output").check_data(autoregressive) == []
    assert TrajectoryDistillation().check_data(autoregressive) == []  # noisy states: causal either way
    assert TrajectoryDistillation(flavour="teacher_forcing").check_data({"order": "joint", "snapshot_sigmas": [1.0]}) == []


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_causal_diffusion_is_the_flow_loss_at_one_sigma_per_block(teacher_forcing):
    generator = StubFullSequence(block_size=2)
    x0 = latents(8, shape=(8, NF, C, H, W))
    ctx = context_for(x0, {"generator": generator}, real=x0)
    ctx.context = torch.ones(8, 5, 8)
    loss, _ = CausalDiffusion(teacher_forcing=teacher_forcing, timestep_shift=3.0).generator_loss(ctx)
    (call,) = generator.calls
    x_sigma, sigma = call["x"], call["sigma"]
    assert torch.equal(sigma[:, 0], sigma[:, 1]) and torch.equal(sigma[:, 2], sigma[:, 3])
    assert not torch.equal(sigma[:, 0], sigma[:, 2]), "blocks draw their own σ"
    eps = recovered_noise(x_sigma, x0, sigma)
    assert_standard_normal(eps)
    if teacher_forcing:
        assert torch.equal(call["clean"], x0)
        v = generator.expected_teacher_forcing(x_sigma, sigma, ctx.context, x0)
    else:
        assert "clean" not in call
        v = generator.expected(x_sigma, sigma, ctx.context)
    assert torch.allclose(loss, (v - (eps - x0)).square().mean(), rtol=1e-5)


def test_consistency_regresses_the_students_x0_at_sigma_onto_the_emas_at_the_next_grid_point():
    teacher = StubScore(a=0.5, b=0.2, c=1.0)
    student, ema = StubFullSequence(a=0.2, d=0.3), StubFullSequence(a=-0.4, d=0.1)
    objective = ConsistencyDistillation(num_grid_steps=8)
    assert objective.guidance_scale == 3.0, "Causal Forcing's CD teacher: uncond + 3·(cond − uncond)"
    real = latents(9)
    loss, _ = objective.generator_loss(context_for(real, {"teacher": teacher, "generator": student,
                                                          "generator_ema": ema}, real=real))
    (t_call,), (s_call,), (e_call,) = teacher.calls, student.calls, ema.calls
    grid = objective.grid
    sigma, sigma_next = s_call["sigma"][:, 0], e_call["sigma"][:, 0]
    k = (grid[None] - sigma[:, None]).abs().argmin(1)
    assert torch.allclose(grid[k], sigma) and torch.allclose(grid[k + 1], sigma_next), "σ and the next grid point"
    x_sigma = s_call["x"]
    assert_standard_normal(recovered_noise(x_sigma, real, sigma))
    assert torch.equal(t_call["x"], torch.cat([x_sigma, x_sigma]))
    cond, uncond = contexts()
    vc, vu = teacher.expected(x_sigma, sigma, cond), teacher.expected(x_sigma, sigma, uncond)
    x_next = x_sigma + per_sample(sigma_next - sigma, x_sigma) * (vu + 3.0 * (vc - vu))
    assert torch.allclose(e_call["x"], x_next, atol=1e-5)
    assert torch.equal(s_call["clean"], real) and torch.equal(e_call["clean"], real)
    prediction = x_sigma - per_sample(sigma, x_sigma) * student.expected_teacher_forcing(x_sigma, sigma, cond, real)
    target = x_next - per_sample(sigma_next, x_next) * ema.expected_teacher_forcing(x_next, sigma_next, cond, real)
    assert torch.allclose(loss, (prediction - target).square().mean(), rtol=1e-5)
    loss.backward()
    assert student.a.grad is not None and ema.a.grad is None and teacher.a.grad is None


# --- the KV cache's cross-block gradient path (fidelity fix 3) -------------------------------------------
@pytest.mark.parametrize("cache_gradient", [False, True])
def test_gradient_reaches_an_earlier_block_through_the_cache_only_when_asked(cache_gradient):
    torch.manual_seed(0)
    generator = CausalWanBackbone(WanConfig(**TINY), block_size=1)
    first_noise = []

    def noise_fn(shape):
        noise = torch.randn(shape, generator=gen).requires_grad_(not first_noise)
        first_noise.append(noise)
        return noise

    context = torch.randn(1, 5, 46)
    outputs = {}
    for keep in (False, True):
        gen, first_noise = torch.Generator().manual_seed(0), []
        options = dict(cache_gradient=True) if keep else {}  # the defaults: with gradient, detached cache
        rollout = self_forcing_rollout(generator, context, noise_fn, 3, (12, 4, 4), [1.0], 0, **options)
        outputs[keep] = (rollout.latents, first_noise[0])
    latents_, noise0 = outputs[cache_gradient]
    assert torch.equal(outputs[False][0].detach(), outputs[True][0].detach()), "the forward values do not change"
    (grad,) = torch.autograd.grad(latents_[:, 2].square().sum(), noise0, allow_unused=True)
    if cache_gradient:
        assert grad is not None and grad.abs().sum() > 0, "block 2's loss reaches block 0 through the cache"
    else:
        assert grad is None or grad.abs().sum() == 0, "the detached cache lets no gradient across blocks"


@pytest.mark.parametrize("keep_gradient", [False, True])
def test_cache_history_reads_the_buffer_with_a_straight_through_gradient_to_remembered_blocks(keep_gradient):
    from oneforcing.models.causal_attention import KVCache

    T, shape = 2, (1, 2, 1, 3)  # 2 tokens per frame; (B, n·T, heads, head_dim) for a 1-frame block
    cache = KVCache(num_layers=1, batch_size=1, tokens_per_frame=T, num_heads=1, head_dim=3, capacity_frames=4,
                    keep_gradient=keep_gradient)
    g = torch.Generator().manual_seed(0)
    exit_k, exit_v = (torch.randn(shape, generator=g).requires_grad_() for _ in range(2))
    written = {}
    for frame in range(3):  # block 0 with gradient, block 1 without, then each block's context pass
        cache.begin_call(frame, 1)
        lo, hi = cache.current
        if frame == 0:
            cache.k[0, :, lo:hi], cache.v[0, :, lo:hi] = exit_k.detach(), exit_v.detach()
            cache.remember(0, exit_k, exit_v)
        if frame < 2:
            cache.begin_call(frame, 1)  # the context pass rewrites the block's slots
            written[frame] = (torch.randn(shape, generator=g), torch.randn(shape, generator=g))
            cache.k[0, :, lo:hi], cache.v[0, :, lo:hi] = written[frame]
    lo, _ = cache.current  # frame 2's call reads the history of frames 0 and 1
    keys, values = cache.history(0, lo)
    assert torch.equal(keys, torch.cat([written[0][0], written[1][0]], dim=1)), "the values are the buffer's"
    assert torch.equal(values, torch.cat([written[0][1], written[1][1]], dim=1))
    weight_k, weight_v = torch.randn(keys.shape, generator=g), torch.randn(values.shape, generator=g)
    if not keep_gradient:
        assert not keys.requires_grad and not values.requires_grad
        return
    (keys * weight_k + values * weight_v).sum().backward()
    assert torch.equal(exit_k.grad, weight_k[:, :T]) and torch.equal(exit_v.grad, weight_v[:, :T]), \
        "the gradient at block 0's slots goes straight to its exit-step K/V"
