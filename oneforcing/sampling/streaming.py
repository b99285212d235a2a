"""Streaming autoregressive generation with a KV cache (algorithm-notes §3.2, §7; design §7).

Per block of n latent frames at offset s:
    x = ε;  for i, σ_i in steps:  x0 = x - σ_i·v(x, σ_i);  if not last: x = (1-σ_{i+1})·x0 + σ_{i+1}·ε'
    then one context pass v(x0, σ_ctx) that rewrites the block's cache slots with the clean block,
so a block costs len(steps) + 1 forwards. The first block may have its own size and schedule
(first-frame enhancement). Inference feeds the clean x0 to the context pass (σ_ctx = 0, no added noise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import add_noise, x0_from_velocity
from oneforcing.sampling.schedules import check_sigmas, sigma_tensor


@dataclass
class GeneratedBlock:
    """A finished block: latents (B, n, C, H, W) for absolute frames [start, start + n)."""

    start: int
    latents: torch.Tensor


def per_prompt_generators(seed: int, batch_size: int) -> list[torch.Generator]:
    """Prompt i of a batch draws all its noise from Generator(seed + i): results do not depend on batching."""
    return [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


class StreamingSampler:
    """Few-step block-by-block sampler of a ``CausalWanBackbone``.

    Args:
        model: the causal generator; its block layout (block size, first block size, window, sink) is used.
        step_sigmas: σ list of every block (e.g. [1.0] for one step).
        first_block_sigmas: σ list of the first block (first-frame enhancement), default ``step_sigmas``.
        context_sigma: σ of the context pass (0: the clean block).
    """

    def __init__(self, model: CausalWanBackbone, step_sigmas: Sequence[float],
                 first_block_sigmas: Sequence[float] | None = None, context_sigma: float = 0.0) -> None:
        self.model = model
        self.step_sigmas = check_sigmas(step_sigmas, "step_sigmas")
        self.first_block_sigmas = check_sigmas(first_block_sigmas, "first_block_sigmas") if first_block_sigmas else None
        self.context_sigma = context_sigma

    @torch.no_grad()
    def stream(self, context: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
               generators: list[torch.Generator]) -> Iterator[GeneratedBlock]:
        """Yield blocks as they are finished. context: (B, L, D); latent_shape: (C, H, W)."""
        B = context.shape[0]
        if len(generators) != B:
            raise ValueError(f"{len(generators)} noise generators for a batch of {B} prompts; pass one per prompt.")
        C, H, W = latent_shape
        device = context.device
        model = self.model
        cache = model.new_cache(B, H, W, num_frames, device=device)
        for index, (start, n) in enumerate(model.layout(num_frames).blocks):
            sigmas = self.first_block_sigmas if index == 0 and self.first_block_sigmas else self.step_sigmas
            x = draw_noise(generators, (n, C, H, W), device)
            for i, sigma in enumerate(sigmas):
                s = sigma_tensor(sigma, B, n, device)
                x0 = x0_from_velocity(x, model.forward_cached(x, s, context, cache, start), s)
                if i + 1 < len(sigmas):
                    x = add_noise(x0, draw_noise(generators, (n, C, H, W), device),
                                  sigma_tensor(sigmas[i + 1], B, n, device))
            model.forward_cached(x0, sigma_tensor(self.context_sigma, B, n, device), context, cache, start)
            yield GeneratedBlock(start, x0)

    def sample(self, context: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
               generators: list[torch.Generator],
               on_block: Callable[[GeneratedBlock], None] | None = None) -> torch.Tensor:
        """All blocks concatenated: (B, F, C, H, W)."""
        blocks = []
        for block in self.stream(context, num_frames, latent_shape, generators):
            if on_block is not None:
                on_block(block)
            blocks.append(block.latents)
        return torch.cat(blocks, dim=1)
