"""A teacher's probability-flow ODE trajectories: the Euler integration with CFG kept at chosen grid points (joint
over all frames, or frame by frame over the clean earlier frames), for the ODE init's regression targets
(docs/algorithms.md §2, §8)."""

from __future__ import annotations

import torch

from oneforcing.sampling.euler import VelocityFn, autoregressive_euler_sample, euler_sample


def snapshot_indices(grid: torch.Tensor, snapshot_sigmas: list[float], tolerance: float = 1e-6) -> list[int]:
    """Grid index of each snapshot σ; a ValueError when one is not on the grid."""
    indices = []
    for sigma in snapshot_sigmas:
        distance = (grid[:-1] - sigma).abs()
        index = int(distance.argmin())
        if float(distance[index]) > tolerance:
            raise ValueError(
                f"Snapshot σ={sigma:.6f} is not on the {len(grid) - 1}-step Euler grid (nearest {float(grid[index]):.6f}). "
                "Choose snapshot steps and a step count that line up (e.g. 48 steps with [1000, 750, 500, 250] at "
                "the same shift)."
            )
        indices.append(index)
    return indices


def sample_trajectory(velocity: VelocityFn, noise: torch.Tensor, context: torch.Tensor,
                      uncond_context: torch.Tensor, grid: torch.Tensor, guidance_scale: float,
                      indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(states at the grid ``indices`` (B, K, F, C, H, W), ODE output (B, F, C, H, W)) of one Euler integration."""
    kept = {}
    output = euler_sample(velocity, noise, context, grid, uncond_context, guidance_scale,
                          on_step=lambda i, x, v: kept.__setitem__(i, x.clone()) if i in indices else None)
    return torch.stack([kept[i] for i in indices], dim=1), output


def sample_autoregressive_trajectory(velocity: VelocityFn, noise: torch.Tensor, context: torch.Tensor,
                                     uncond_context: torch.Tensor, grid: torch.Tensor, guidance_scale: float,
                                     indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_trajectory`` frame by frame (``autoregressive_euler_sample``): frame f's states at the grid
    ``indices`` come from its own integration, over its clean earlier frames; (B, K, F, C, H, W), (B, F, C, H, W)."""
    states = noise.new_zeros(noise.shape[0], len(indices), *noise.shape[1:])
    position = {i: k for k, i in enumerate(indices)}

    def record(start: int, i: int, x_block: torch.Tensor) -> None:
        if i in position:
            states[:, position[i], start:start + x_block.shape[1]] = x_block

    output = autoregressive_euler_sample(velocity, noise, context, grid, uncond_context, guidance_scale,
                                         block_size=1, on_step=record)
    return states, output
