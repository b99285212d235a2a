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


def teacher_forcing_velocity(generator, clean: torch.Tensor) -> VelocityFn:
    """A causal teacher's velocity ``v(x, σ, context)`` in teacher-forcing mode on the ground truth ``clean``
    (``generator.forward_teacher_forcing``: a causal Wan, or the exact toy teacher's causal posterior).

    σ (B,) puts all frames at the same noise level. CFG (``guided_velocity``) calls it once with the 2B batch
    [x; x] and [context; uncond]: the clean context is then repeated to [clean; clean].
    """

    def velocity(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        repeats, rest = divmod(x.shape[0], clean.shape[0])
        if rest or x.shape[1:] != clean.shape[1:]:
            raise ValueError(f"teacher forcing: noisy batch {tuple(x.shape)} does not fit the clean context "
                             f"{tuple(clean.shape)}.")
        per_frame = sigma[:, None].expand(-1, x.shape[1]) if sigma.ndim == 1 else sigma  # (B, F)
        context_frames = clean.repeat(repeats, *([1] * (clean.ndim - 1))) if repeats > 1 else clean
        return generator.forward_teacher_forcing(x, per_frame, context, clean=context_frames)

    return velocity


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


@torch.no_grad()
def autoregressive_euler_sample(
    model: VelocityFn, noise: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
    uncond_context: torch.Tensor | None = None, guidance_scale: float = 1.0, block_size: int = 1,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate a per-frame-σ model block by block: each block of ``block_size`` frames runs the whole ODE
    ``sigmas`` with the frames before it clean (σ = 0, the values this sampler made) and the frames after it
    pure noise (σ = 1), so block j depends on the noise of blocks ≤ j only.

    That is the causal factorisation a causal student can regress onto: a bidirectional teacher's joint ODE
    makes frame 0 depend on every frame's noise, which a causal student never sees (Causal Forcing's
    argument for a causal teacher). ``model`` must accept σ of shape (B, F) (the exact toy teacher does).
    noise: (B, F, C, H, W). ``on_step(block_start, i, x_block_i)`` sees each block's state before update i.
    """
    x = noise.clone()
    F = x.shape[1]
    for start in range(0, F, block_size):
        end = min(start + block_size, F)

        def block_velocity(x_all: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            per_frame = sigma[:, None].repeat(1, F)  # (B', F): earlier frames clean, later ones noise
            per_frame[:, :start], per_frame[:, end:] = 0.0, 1.0
            v = model(x_all, per_frame, ctx)
            mask = torch.zeros(F, device=v.device, dtype=v.dtype)
            mask[start:end] = 1.0
            return v * mask.view(1, F, *([1] * (v.ndim - 2)))  # only the block moves

        def record(i: int, x_i: torch.Tensor, v_i: torch.Tensor, start: int = start, end: int = end) -> None:
            if on_step is not None:
                on_step(start, i, x_i[:, start:end])

        x = euler_sample(block_velocity, x, context, sigmas, uncond_context, guidance_scale, on_step=record)
    return x
