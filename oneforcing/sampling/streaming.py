"""Streaming autoregressive generation with a KV cache (docs/algorithms.md §4, §5).

Per block of n latent frames at offset s:
    x = ε;  for i, σ_i in steps:  x0 = x - σ_i·v(x, σ_i);  if not last: x = (1-σ_{i+1})·x0 + σ_{i+1}·ε'
    then one context pass v(x0, σ_ctx) that rewrites the block's cache slots with the clean block,
so a block costs len(steps) + 1 forwards. The first block may have its own size and schedule
(first-frame enhancement). Inference feeds the clean x0 to the context pass (σ_ctx = 0, no added noise).

That re-noising update is the few-step students' (each step's x0 prediction is a sample of their distribution).
A many-step diffusion model (autoregressive diffusion, Causal Forcing's stage 1) predicts the *mean* x0 and is
sampled by integrating its ODE instead (``solver="euler"``): x ← x + (σ_{i+1} − σ_i)·v, to σ = 0 after the last
step; re-noising a posterior mean with fresh noise at every step would blur it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from oneforcing.models.causal_attention import KVCache
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.sampling.block_denoising import denoise_block
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


SOLVERS = ("renoise", "euler")


class StreamingSampler:
    """Few-step block-by-block sampler of a ``CausalWanBackbone``.

    Args:
        model: the causal generator; its block layout (block size, first block size, window, sink) is used.
        step_sigmas: σ list of every block (e.g. [1.0] for one step).
        first_block_sigmas: σ list of the first block (first-frame enhancement), default ``step_sigmas``.
        context_sigma: σ of the context pass (0: the clean block).
        solver: "renoise" (few-step students: x0 re-noised with fresh noise at the next σ) or "euler" (a diffusion
            model's probability-flow ODE, ending at σ = 0).
    """

    def __init__(self, model: CausalWanBackbone, step_sigmas: Sequence[float],
                 first_block_sigmas: Sequence[float] | None = None, context_sigma: float = 0.0,
                 solver: Literal["renoise", "euler"] = "renoise") -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is not a sampler update; use one of {SOLVERS}.")
        self.model, self.solver = model, solver
        self.step_sigmas = check_sigmas(step_sigmas, "step_sigmas")
        self.first_block_sigmas = check_sigmas(first_block_sigmas, "first_block_sigmas") if first_block_sigmas else None
        self.context_sigma = context_sigma

    @torch.no_grad()
    def stream(self, context: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
               generators: list[torch.Generator], prefix: torch.Tensor | None = None) -> Iterator[GeneratedBlock]:
        """Yield blocks as they are finished. context: (B, L, D); latent_shape: (C, H, W).

        ``prefix`` (B, P, C, H, W): given first frames (whole blocks), which fill the cache through their context
        passes instead of being generated; their blocks draw the noise they would have drawn, so continuing a
        stream from its own first blocks reproduces it.
        """
        B = context.shape[0]
        if len(generators) != B:
            raise ValueError(f"{len(generators)} noise generators for a batch of {B} prompts; pass one per prompt.")
        C, H, W = latent_shape
        device = context.device
        model = self.model
        blocks = model.layout(num_frames).blocks
        given = 0 if prefix is None else prefix.shape[1]
        if prefix is not None and (given not in [start for start, _ in blocks] + [num_frames]
                                   or prefix.shape[0] != B or tuple(prefix.shape[2:]) != (C, H, W)):
            raise ValueError(f"prefix {tuple(prefix.shape)} must be (B={B}, P, {C}, {H}, {W}) with P a whole number of "
                             f"blocks of this layout (block starts {[start for start, _ in blocks]}).")
        cache = model.new_cache(B, H, W, num_frames, device=device)
        for index, (start, n) in enumerate(blocks):
            sigmas = self.block_sigmas(index)
            if start < given:  # a given block: its noise draws are consumed, its frames go to the cache as they are
                for _ in range(self.draws_per_block(sigmas)):
                    draw_noise(generators, (n, C, H, W), device)
                self.remember(prefix[:, start:start + n].to(device), context, cache, start)
            else:
                yield GeneratedBlock(start, self.generate_block(context, cache, start, (n, C, H, W), generators, sigmas))

    def block_sigmas(self, index: int) -> list[float]:
        """The σ list of block ``index`` (the first block's own under first-frame enhancement)."""
        return self.first_block_sigmas if index == 0 and self.first_block_sigmas else self.step_sigmas

    def draws_per_block(self, sigmas: Sequence[float]) -> int:
        """Noise tensors one block draws: its starting noise, and one per re-noising step."""
        return 1 + (len(sigmas) - 1 if self.solver == "renoise" else 0)

    def generate_block(self, context: torch.Tensor, cache: KVCache, start: int, shape: tuple[int, int, int, int],
                       generators: list[torch.Generator], sigmas: Sequence[float]) -> torch.Tensor:
        """One block at frames [start, start + n) from fresh noise to clean latents (B, n, C, H, W), over the
        cache of the frames before it; its context pass then writes the clean block into the cache.
        shape: (n, C, H, W)."""
        x = draw_noise(generators, shape, context.device)
        x0 = denoise_block(self.model, x, sigmas, context, cache, start,
                           lambda: draw_noise(generators, shape, context.device), self.solver)
        self.remember(x0, context, cache, start)
        return x0

    def remember(self, x0: torch.Tensor, context: torch.Tensor, cache: KVCache, start: int) -> None:
        """The context pass: the clean block x0 (B, n, C, H, W) at σ_ctx writes its K/V into the cache."""
        B, n = x0.shape[:2]
        self.model.forward_cached(x0, sigma_tensor(self.context_sigma, B, n, x0.device), context, cache, start)

    def sample(self, context: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
               generators: list[torch.Generator],
               on_block: Callable[[GeneratedBlock], None] | None = None,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
        """All blocks concatenated, the given ``prefix`` first: (B, F, C, H, W)."""
        blocks = [] if prefix is None else [prefix]
        for block in self.stream(context, num_frames, latent_shape, generators, prefix):
            if on_block is not None:
                on_block(block)
            blocks.append(block.latents)
        return torch.cat(blocks, dim=1)
