"""Many-step Euler sampler of the probability-flow ODE (the bidirectional teacher's sampler)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from oneforcing.models.flow_matching import classifier_free_guidance

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_velocity(
    model: VelocityFn, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
    uncond_context: torch.Tensor | None, guidance_scale: float,
) -> torch.Tensor:
    """v = uncond + w·(cond − uncond) from one 2B forward (w = 1 or no uncond context: plain conditional)."""
    if uncond_context is None or guidance_scale == 1.0:
        return model(x, sigma, context)
    both = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([context, uncond_context]))
    cond, uncond = both.chunk(2)
    return classifier_free_guidance(cond, uncond, guidance_scale)


def guidance_interval_problem(interval: tuple[float, float]) -> str | None:
    """Why ``interval`` is not a valid (lo, hi] guidance range, or None."""
    lo, hi = interval
    return None if 0.0 <= lo < hi else f"guidance_interval={tuple(interval)} must be (lo, hi) with 0 <= lo < hi"


@torch.no_grad()
def euler_sample(
    model: VelocityFn, noise: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
    uncond_context: torch.Tensor | None = None, guidance_scale: float = 1.0,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Integrate dx/dσ = v from σ = sigmas[0] to sigmas[-1] (normally 0); returns x at the last σ.

    noise: (B, F, C, H, W); sigmas: decreasing, (N+1,). ``on_step(i, x_i, v_i)`` sees each state before
    its update (used to record trajectories). CFG applies only to steps with σ in ``guidance_interval``
    = (lo, hi]; the others take the conditional velocity (guidance in a limited interval, Kynkäänniemi
    et al. 2024). The default (0, 1] guides every step.
    """
    problem = guidance_interval_problem(guidance_interval)
    if problem:
        raise ValueError(problem + ".")
    lo, hi = guidance_interval
    x = noise
    B = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma = torch.full((B,), s, device=x.device)
        v = guided_velocity(model, x, sigma, context, uncond_context if lo < s <= hi else None, guidance_scale)
        if on_step is not None:
            on_step(i, x, v)
        x = x + (s_next - s) * v  # Euler step, x_next = x + v·(σ_next − σ)
    return x
