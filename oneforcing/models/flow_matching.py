"""Rectified-flow (flow-matching) schedule shared by every role.

Conventions (docs/algorithms.md §1):
    x_t = (1 - σ)·x0 + σ·ε,   velocity target v* = ε - x0,   timestep t = 1000·σ,
    shift: σ' = s·σ / (1 + (s - 1)·σ).
σ is used exactly as given. The reference code snaps σ to the nearest entry of a 1000-entry table
(so ``add_noise(x, ε, t=0)`` there adds σ≈0.005 of noise); we do not, and say so in the docs.
All functions are pure; shapes follow the project alphabet, latents are (B, F, C, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """σ' = s·σ / (1 + (s-1)·σ) (SD3 / Wan timestep shift)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def _expand_sigma(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast σ of shape (B,) or (B, F) against latents (B, F, C, H, W)."""
    if sigma.ndim == 1:
        sigma = sigma[:, None]
    return sigma.reshape(*sigma.shape, *([1] * (like.ndim - sigma.ndim))).to(like.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - σ)·x0 + σ·ε with σ per sample (B,) or per frame (B, F)."""
    s = _expand_sigma(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow-matching regression target v* = ε - x0 (d x_t / d σ)."""
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = x_t - σ·v."""
    return x_t - _expand_sigma(sigma, x_t) * velocity


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v = (x_t - x0) / σ; undefined at σ = 0."""
    return (x_t - x0) / _expand_sigma(sigma, x_t)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Standard CFG: uncond + w·(cond - uncond). The papers' g (cond + g·(cond - uncond)) equals w - 1."""
    return uncond + scale * (cond - uncond)


def euler_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """σ grid of an N-step Euler sampler: shift(linspace(1, 0, N+1)[:-1]) followed by a final 0.

    Returns N+1 values, float64. At N=48, s=5, indices 0/12/24/36 are 1, 0.9375, 0.8333, 0.625: the warped
    4-step list, which is why trajectory snapshots line up with the student's steps.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigma(u, shift), torch.zeros(1, dtype=torch.float64)])


def warped_step_sigmas(nominal_timesteps: Sequence[float], shift: float) -> list[float]:
    """Map nominal steps (e.g. [1000, 750, 500, 250]) to the shifted σ the student is evaluated at.

    Equivalent to the reference's ``warp_denoising_step`` (T[1000 - k]) without the table: σ = shift(k / 1000).
    At s=5, [1000, 750, 500, 250] -> [1.0, 0.9375, 0.8333, 0.625].
    """
    validate_step_list(nominal_timesteps, name="nominal_timesteps", upper=NUM_TRAIN_TIMESTEPS)
    return [float(shift_sigma(k / NUM_TRAIN_TIMESTEPS, shift)) for k in nominal_timesteps]


def validate_step_list(steps: Sequence[float], name: str, upper: float) -> None:
    """Raise a ValueError unless ``steps`` is non-empty, strictly decreasing, and inside (0, upper]."""
    steps = list(steps)
    if not steps:
        raise ValueError(f"{name} is empty; give at least one step, e.g. [{upper}].")
    bad = [s for s in steps if not (0 < s <= upper)]
    if bad:
        raise ValueError(f"{name}={steps} has values outside (0, {upper}]: {bad}. Use values in that range.")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{name}={steps} is not strictly decreasing; list steps from noisy to clean.")
