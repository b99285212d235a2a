"""Step schedules as explicit σ lists (docs/algorithms.md §2): never diffusers' ``set_timesteps(N)``, which
shifts twice."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from oneforcing.models.flow_matching import euler_sigmas, validate_step_list, warped_step_sigmas

STUDENT_SHIFT = 5.0  # the warped few-step list of the papers (docs/algorithms.md §2)


def nominal_steps(num_steps: int) -> list[float]:
    """Evenly spaced nominal timesteps from 1000: 1 -> [1000], 2 -> [1000, 500], 4 -> [1000, 750, 500, 250]."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    return [1000.0 * (1 - i / num_steps) for i in range(num_steps)]


def student_sigmas(num_steps: int, shift: float = STUDENT_SHIFT) -> list[float]:
    """Warped few-step σ list of the causal student; at s=5, 4 steps give [1, 0.9375, 0.8333, 0.625]."""
    return warped_step_sigmas(nominal_steps(num_steps), shift)


def many_step_sigmas(num_steps: int = 48, shift: float = 5.0) -> list[float]:
    """The teacher's Euler grid without its final 0 (N values)."""
    return euler_sigmas(num_steps, shift)[:-1].tolist()


def check_sigmas(sigmas: Sequence[float], name: str) -> list[float]:
    """A σ step list must be non-empty, strictly decreasing, in (0, 1]."""
    validate_step_list(sigmas, name=name, upper=1.0)
    return [float(s) for s in sigmas]


def sigma_tensor(value: float, batch: int, frames: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch, frames), value, device=device)
