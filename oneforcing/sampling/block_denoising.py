"""One block's denoising over the KV cache: the loop the training roll-out and the streaming sampler share.

    for i, σ_i in steps:  v = v(x, σ_i | cache);  last: x0 = x − σ_i·v
                          else re-noise: x = (1 − σ_{i+1})·x0(x, v) + σ_{i+1}·ε'   or Euler: x = x + (σ_{i+1} − σ_i)·v
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from oneforcing.models.causal_attention import KVCache
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import add_noise, x0_from_velocity
from oneforcing.sampling.schedules import sigma_tensor


def denoise_block(model: CausalWanBackbone, x: torch.Tensor, sigmas: Sequence[float], context: torch.Tensor,
                  cache: KVCache, start: int, next_noise: Callable[[], torch.Tensor], solver: str = "renoise",
                  grad_last: bool = False) -> torch.Tensor:
    """The clean block x0 (B, n, C, H, W) from ``x`` (B, n, C, H, W) at σ = ``sigmas[0]``, for frames [start, start + n)
    over the cache of the frames before them. ``next_noise()`` draws the fresh noise of each re-noising step
    (``solver="renoise"``, the few-step students); ``"euler"`` integrates a diffusion model's ODE instead. Only the
    last step's forward carries gradient, and only with ``grad_last`` (the roll-out's exit step); the cache is left
    as the forwards found it (the block's context pass is the caller's)."""
    B, n = x.shape[:2]
    for i, sigma in enumerate(sigmas):
        last = i + 1 == len(sigmas)
        s = sigma_tensor(sigma, B, n, x.device)
        with torch.set_grad_enabled(grad_last and last):
            v = model.forward_cached(x, s, context, cache, start)
            if last:
                return x0_from_velocity(x, v, s)
        if solver == "euler":
            x = x + (sigmas[i + 1] - sigma) * v
        else:
            x = add_noise(x0_from_velocity(x, v, s), next_noise(), sigma_tensor(sigmas[i + 1], B, n, x.device))
    raise ValueError("denoise_block needs at least one step")
