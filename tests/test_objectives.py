"""Objectives against closed forms on tiny tensors, and the Self-Forcing roll-out's gradient routing."""

import pytest
import torch

from conftest import TINY_WAN
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import shift_sigma
from oneforcing.models.wan import WanConfig
from oneforcing.objectives.dmd import dmd_gradient, dmd_surrogate_loss
from oneforcing.objectives.rollout import gradient_window, self_forcing_rollout
from oneforcing.objectives.timesteps import sample_score_sigma
from oneforcing.objectives.trajectory import per_block_values

CFG = WanConfig(**TINY_WAN)


def test_dmd_gradient_is_fake_minus_real_over_a_per_sample_normaliser():
    g = torch.Generator().manual_seed(0)
    x, real, fake = (torch.randn(3, 2, 4, 3, 3, generator=g) for _ in range(3))
    real[1] *= 10  # a sample with a very different scale must not change the others' normaliser
    grad = dmd_gradient(x, real, fake)
    for b in range(3):
        expected = (fake[b] - real[b]) / (x[b] - real[b]).abs().mean()
        assert torch.allclose(grad[b], expected, atol=1e-6)


def test_dmd_surrogate_gradient_equals_grad_over_the_masked_element_count():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 2, 2, generator=g, requires_grad=True)
    grad = torch.randn(2, 4, 3, 2, 2, generator=g)
    mask = torch.tensor([False, True, True, True])
    loss = dmd_surrogate_loss(x, grad, mask)
    loss.backward()
    n_mask = 2 * 3 * 3 * 2 * 2
    assert torch.allclose(x.grad[:, mask], grad[:, mask] / n_mask, atol=1e-7)
    assert torch.equal(x.grad[:, ~mask], torch.zeros_like(x.grad[:, ~mask]))
    assert torch.isclose(loss, 0.5 * grad[:, mask].square().mean())


def test_score_sigma_distribution_matches_the_reference():
    rng = torch.Generator().manual_seed(0)
    sigma = sample_score_sigma(200_000, rng, shift=5.0)
    assert abs(float(sigma.median()) - 0.833) < 0.01
    assert abs(float((sigma >= 0.98 - 1e-6).float().mean()) - 0.092) < 0.01
    assert float(sigma.min()) >= 0.02 - 1e-6 and float(sigma.max()) <= 0.98 + 1e-6
    assert torch.isclose(shift_sigma(torch.tensor(0.5), 5.0), torch.tensor(5 / 6))


def test_per_block_values_and_gradient_window():
    values = torch.tensor([[1.0, 2.0, 3.0]])
    assert per_block_values(values, [(0, 4), (4, 1), (5, 1)]).tolist() == [[1, 1, 1, 1, 2, 3]]
    assert gradient_window(6, 2).tolist() == [False, False, False, False, True, True]
    assert gradient_window(6, None).all()


def make_generator(**layout):
    torch.manual_seed(0)
    return CausalWanBackbone(CFG, **layout)


def noise_fn_from(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=g)


@pytest.mark.parametrize("exit_index", [0, 2])
def test_rollout_gradient_only_at_the_exit_step_and_inside_the_window(exit_index):
    generator = make_generator(block_size=1)
    context = torch.randn(1, 5, CFG.text_dim)
    calls = []
    original = generator.forward_cached

    def spy(x, sigma, ctx, cache, frame_offset):
        out = original(x, sigma, ctx, cache, frame_offset)
        calls.append((frame_offset, round(float(sigma[0, 0]), 4), out.requires_grad))
        return out

    generator.forward_cached = spy
    sigmas = [1.0, 0.9375, 0.8333, 0.625]
    window = gradient_window(4, 2)
    rollout = self_forcing_rollout(generator, context, noise_fn_from(0), 4, (12, 4, 4), sigmas, exit_index,
                                   window=window, grad=True)
    assert rollout.grad_frames.tolist() == [False, False, True, True]
    for frame in range(4):
        block_calls = [c for c in calls if c[0] == frame]
        # steps up to the exit (shared by every block), then the context pass at σ = 0
        assert [c[1] for c in block_calls] == [round(s, 4) for s in sigmas[: exit_index + 1]] + [0.0]
        grads = [c[2] for c in block_calls]
        assert grads == [False] * exit_index + [bool(window[frame])] + [False]
    rollout.latents[:, 2:].sum().backward()
    assert generator.transformer.proj_out.weight.grad.abs().sum() > 0


def test_rollout_without_grad_builds_no_graph_and_first_block_has_its_own_schedule():
    generator = make_generator(block_size=1, first_block_size=2)
    context = torch.randn(1, 5, CFG.text_dim)
    rollout = self_forcing_rollout(generator, context, noise_fn_from(0), 4, (12, 4, 4), [1.0], 0,
                                   first_block_sigmas=[1.0, 0.9375, 0.8333, 0.625], first_exit_index=3, grad=False)
    assert not rollout.latents.requires_grad and rollout.first_exit_index == 3
    assert rollout.latents.shape == (1, 4, 12, 4, 4)
