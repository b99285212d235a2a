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
    lo, hi = guidance_interval
    if not 0.0 <= lo < hi:
        raise ValueError(f"guidance_interval={guidance_interval} must be (lo, hi) with 0 <= lo < hi.")
    x = noise
    B = x.shape[0]
    for i in range(len(sigmas) - 1):
        sigma = torch.full((B,), float(sigmas[i]), device=x.device)
        guided = lo < float(sigmas[i]) <= hi
        v = guided_velocity(model, x, sigma, context, uncond_context if guided else None, guidance_scale)
        if on_step is not None:
            on_step(i, x, v)
        x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v  # Euler step, x_next = x + v·(σ_next − σ)
    return x
