"""The Self-Forcing training roll-out over the KV cache (docs/algorithms.md §6).

Per block: the steps before the exit step run without gradient (fresh noise between steps); the exit
step's x0 prediction is the block's output and carries gradient when the block overlaps the gradient
window; a no-grad context pass then rewrites the block's cache slots with the clean output. The exit step
is drawn once per iteration and shared by all blocks (the first block, when it has its own schedule, gets
its own draw); the draw comes from a generator seeded identically on every rank, so ranks agree without a
broadcast. The cache is detached between blocks (docs/algorithms.md §4) unless ``cache_gradient``: then a
later block's gradient also reaches earlier blocks through their cached keys and values, as in the official
roll-out (the values read are the context pass's, the gradient goes to the exit step's K/V).

Deliberate deviation: the context pass uses σ_ctx exactly (0 → the clean block); the reference's
nearest-table lookup adds σ≈0.005 noise in training only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import add_noise
from oneforcing.sampling.block_denoising import denoise_block


@dataclass
class Rollout:
    """Generated latents (B, F, C, H, W) and the frames that carry gradient (F,) bool."""

    latents: torch.Tensor
    grad_frames: torch.Tensor
    exit_index: int
    first_exit_index: int


def gradient_window(num_frames: int, window_frames: int | None, position: str = "tail") -> torch.Tensor:
    """(F,) bool: the frames whose blocks run their exit step with gradient (None: all frames)."""
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if window_frames is None or window_frames >= num_frames:
        mask[:] = True
    elif position == "tail":
        mask[num_frames - window_frames:] = True
    elif position == "head":
        mask[:window_frames] = True
    else:
        raise ValueError(f"gradient window position {position!r} is not 'tail' or 'head'.")
    return mask


def self_forcing_rollout(
    generator: CausalWanBackbone, context: torch.Tensor, noise_fn, num_frames: int,
    latent_shape: tuple[int, int, int], step_sigmas: Sequence[float], exit_index: int,
    first_block_sigmas: Sequence[float] | None = None, first_exit_index: int | None = None,
    window: torch.Tensor | None = None, grad: bool = True, context_sigma: float = 0.0,
    cache_gradient: bool = False,
) -> Rollout:
    """Roll the generator out block by block; ``noise_fn(shape)`` supplies every noise draw."""
    B = context.shape[0]
    C, H, W = latent_shape
    device = context.device
    window = gradient_window(num_frames, None) if window is None else window
    cache = generator.new_cache(B, H, W, num_frames, device=device, keep_gradient=cache_gradient and grad)
    outputs, grad_frames = [], torch.zeros(num_frames, dtype=torch.bool)
    first_exit = exit_index if first_exit_index is None else first_exit_index
    for b, (start, n) in enumerate(generator.layout(num_frames).blocks):
        sigmas, exit_at = (first_block_sigmas, first_exit) if (b == 0 and first_block_sigmas) else (step_sigmas, exit_index)
        x = noise_fn((B, n, C, H, W))
        with_grad = grad and bool(window[start:start + n].any())
        x0 = denoise_block(generator, x, sigmas[: exit_at + 1], context, cache, start,
                           lambda: noise_fn((B, n, C, H, W)), grad_last=with_grad)
        grad_frames[start:start + n] = with_grad
        with torch.no_grad():
            clean = x0 if context_sigma == 0 else add_noise(x0, noise_fn(x0.shape), torch.full((B, n), context_sigma, device=device))
            generator.forward_cached(clean.detach(), torch.full((B, n), context_sigma, device=device), context, cache, start)
        outputs.append(x0)
    return Rollout(torch.cat(outputs, dim=1), grad_frames, exit_index, first_exit)
