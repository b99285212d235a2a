"""The flow-matching schedule (docs/algorithms.md §1, §2): shift, noising, velocity, step grids, CFG, the
Euler sampler."""

from __future__ import annotations

import pytest
import torch

from oneforcing.models.flow_matching import (
    add_noise,
    classifier_free_guidance,
    euler_sigmas,
    shift_sigma,
    validate_step_list,
    velocity_from_x0,
    velocity_target,
    warped_step_sigmas,
    x0_from_velocity,
)
from oneforcing.sampling.euler import euler_sample, guided_velocity


def latents(seed: int, shape=(2, 3, 4, 5, 6)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_shift_matches_closed_form():
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)
    assert shift_sigma(0.25, 5.0) == pytest.approx(5 * 0.25 / (1 + 4 * 0.25))
    sigma = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = shift_sigma(sigma, 5.0)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0  # fixed points
    assert torch.all(shifted[1:] > shifted[:-1])  # monotone
    assert torch.all(shifted[1:-1] > sigma[1:-1])  # s > 1 moves every interior σ towards noise
    assert torch.allclose(shift_sigma(sigma, 1.0), sigma)  # s = 1 is the identity


def test_add_noise_endpoints_and_per_frame_sigma():
    x0, noise = latents(0), latents(1)
    B, F = x0.shape[:2]
    assert torch.equal(add_noise(x0, noise, torch.zeros(B)), x0)  # σ = 0 exactly: no table snapping
    assert torch.equal(add_noise(x0, noise, torch.ones(B)), noise)
    per_frame = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.25, 0.0]])  # (B, F)
    x_t = add_noise(x0, noise, per_frame)
    for b in range(B):
        for f in range(F):
            s = per_frame[b, f].item()
            assert torch.allclose(x_t[b, f], (1 - s) * x0[b, f] + s * noise[b, f])
    per_video = add_noise(x0, noise, torch.tensor([0.3, 0.7]))
    assert torch.allclose(per_video[1], 0.3 * x0[1] + 0.7 * noise[1])


def test_velocity_conversions_are_consistent():
    x0, noise = latents(2), latents(3)
    sigma = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 1.0]])
    x_t = add_noise(x0, noise, sigma)
    v = velocity_target(x0, noise)
    assert torch.equal(v, noise - x0)
    assert torch.allclose(x_t - sigma.reshape(2, 3, 1, 1, 1) * v, x0)
    assert torch.allclose(x0_from_velocity(x_t, v, sigma), x0)
    assert torch.allclose(velocity_from_x0(x_t, x0, sigma), v)
    other_v = latents(4)
    assert torch.allclose(velocity_from_x0(x_t, x0_from_velocity(x_t, other_v, sigma), sigma), other_v)


def test_euler_sigmas_line_up_with_the_warped_four_step_list():
    sigmas = euler_sigmas(48, 5.0)
    assert sigmas.shape == (49,)
    expected = {0: 1.0, 12: 0.9375, 24: 5 / 6, 36: 0.625, 47: shift_sigma(1 / 48, 5.0)}
    for i, value in expected.items():
        assert sigmas[i].item() == pytest.approx(value, abs=1e-12), i
    assert sigmas[47].item() == pytest.approx(0.0962, abs=1e-4)
    assert sigmas[-1].item() == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    with pytest.raises(ValueError, match="num_steps"):
        euler_sigmas(0, 5.0)


def test_warped_step_sigmas():
    assert warped_step_sigmas([1000, 750, 500, 250], 5.0) == pytest.approx([1.0, 0.9375, 5 / 6, 0.625])
    assert warped_step_sigmas([1000], 5.0) == [1.0]


@pytest.mark.parametrize(
    "steps, message",
    [
        ([], "empty"),
        ([750, 1000], "not strictly decreasing"),
        ([1000, 500, 500], "not strictly decreasing"),
        ([1000, 0], "outside"),
        ([1200, 500], "outside"),
        ([1000, -5], "outside"),
    ],
)
def test_validate_step_list_rejects_bad_lists(steps, message):
    with pytest.raises(ValueError, match=message):
        validate_step_list(steps, name="denoising_steps", upper=1000)
    with pytest.raises(ValueError, match=message):
        warped_step_sigmas(steps, 5.0)


def test_validate_step_list_accepts_a_decreasing_list():
    validate_step_list([1000, 750, 500, 250], name="denoising_steps", upper=1000)


def test_classifier_free_guidance_is_the_standard_form():
    cond, uncond = latents(5), latents(6)
    assert torch.allclose(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    assert torch.allclose(classifier_free_guidance(cond, uncond, 4.0), uncond + 4.0 * (cond - uncond))
    # the papers' g: cond + g·(cond − uncond) is the same number at g = w − 1
    g = 3.0
    assert torch.allclose(classifier_free_guidance(cond, uncond, g + 1), cond + g * (cond - uncond))


def test_guided_velocity_runs_cond_and_uncond_in_one_batch():
    calls = []

    def model(x, sigma, context):
        calls.append(x.shape[0])
        return context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1).expand_as(x).clone()

    x = torch.zeros(2, 1, 1, 2, 2)
    cond, uncond = torch.full((2, 3, 4), 2.0), torch.zeros(2, 3, 4)
    v = guided_velocity(model, x, torch.ones(2), cond, uncond, 3.0)
    assert calls == [4]
    assert torch.allclose(v, torch.full_like(x, 0.0 + 3.0 * (2.0 - 0.0)))
    assert torch.allclose(guided_velocity(model, x, torch.ones(2), cond, uncond, 1.0), torch.full_like(x, 2.0))


def test_euler_sampler_integrates_the_straight_flow_exactly():
    """v = ε − x0 is constant along the straight path x_σ = (1−σ)·x0 + σ·ε, so Euler lands on x0 at σ = 0."""
    x0, noise = latents(7), latents(8)
    seen = []

    def model(x, sigma, context):
        return noise - x0

    out = euler_sample(model, noise, context=torch.zeros(2, 1, 1), sigmas=euler_sigmas(7, 3.0),
                       on_step=lambda i, x, v: seen.append(i))
    assert torch.allclose(out, x0, atol=1e-6)
    assert seen == list(range(7))


def test_euler_sampler_follows_the_ode_of_the_true_x0_predictor():
    """With v(x, σ) = (x − x0)/σ (the exact velocity towards a fixed x0), every Euler state stays on the path."""
    x0, noise = latents(9), latents(10)
    sigmas = euler_sigmas(5, 5.0)
    states = []

    def model(x, sigma, context):
        return velocity_from_x0(x, x0, sigma)

    out = euler_sample(model, noise, torch.zeros(2, 1, 1), sigmas, on_step=lambda i, x, v: states.append(x))
    for i, x in enumerate(states):
        s = torch.full((2,), float(sigmas[i]), dtype=torch.float64)
        assert torch.allclose(x, add_noise(x0, noise, s), atol=1e-6), i  # the sampler passes σ as float32
    assert torch.allclose(out, x0, atol=1e-6)


def test_guidance_interval_guides_exactly_the_steps_inside_it():
    """v_cond = 2, v_uncond = 0, w = 3: a guided step moves x by 6·Δσ, an unguided one by 2·Δσ (and runs one
    forward of batch B instead of 2B)."""
    batches = []

    def model(x, sigma, context):
        batches.append(x.shape[0])
        return context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1).expand_as(x).clone()

    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0], dtype=torch.float64)
    cond, uncond = torch.full((2, 3, 4), 2.0), torch.zeros(2, 3, 4)
    noise = torch.zeros(2, 1, 1, 2, 2)
    out = euler_sample(model, noise, cond, sigmas, uncond, 3.0, guidance_interval=(0.3, 0.8))
    # steps at σ = 1.0 and 0.2 are outside (0.3, 0.8]; σ = 0.8 and 0.5 are inside
    expected = 2.0 * (0.8 - 1.0) + 6.0 * (0.5 - 0.8) + 6.0 * (0.2 - 0.5) + 2.0 * (0.0 - 0.2)
    assert torch.allclose(out, torch.full_like(noise, expected))
    assert batches == [2, 4, 4, 2]
    everywhere = euler_sample(model, noise, cond, sigmas, uncond, 3.0)  # default (0, 1]: every step guided
    assert torch.allclose(everywhere, torch.full_like(noise, -6.0))
    with pytest.raises(ValueError, match="guidance_interval"):
        euler_sample(model, noise, cond, sigmas, uncond, 3.0, guidance_interval=(0.5, 0.5))
