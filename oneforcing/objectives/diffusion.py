"""Flow-matching diffusion of the causal generator (autoregressive diffusion; Causal Forcing stage 1).

Rectified flow (docs/algorithms.md §1, §9):
    σ per block (u ~ U(0,1), shifted),  x_σ = (1-σ)·x0 + σ·ε,  L = mean( (v_G(x_σ, σ) - (ε - x0))² )
With ``teacher_forcing`` the noisy blocks attend to the ground-truth clean earlier blocks; without it the
block-causal forward runs on the noisy sequence (diffusion forcing).
"""

from __future__ import annotations

import torch

from oneforcing.models.flow_matching import add_noise, shift_sigma, velocity_target
from oneforcing.objectives.base import GROUND_TRUTH, Losses, Objective, StepContext
from oneforcing.objectives.trajectory import per_block_values


class CausalDiffusion(Objective):
    """Flow-matching loss of the causal generator on data latents.

    Args:
        weight: loss weight.
        teacher_forcing: condition noisy blocks on clean ground-truth context (True) or on noisy blocks.
        timestep_shift: shift of the per-block σ draw.
    """

    roles = ("generator",)
    solver = "euler"  # a diffusion model: sampled along its ODE, not re-noised

    def __init__(self, weight: float = 1.0, teacher_forcing: bool = True, timestep_shift: float = 5.0) -> None:
        super().__init__(weight)
        self.teacher_forcing, self.timestep_shift = teacher_forcing, timestep_shift

    def batch_members(self) -> list[tuple[str, ...]]:
        return [GROUND_TRUTH]

    def generator_loss(self, ctx: StepContext) -> Losses:
        x0 = ctx.real_latents
        if x0 is None:
            raise KeyError("CausalDiffusion needs ground-truth latents (pixels or latents) in the batch.")
        generator = ctx.models["generator"]
        B, F = x0.shape[:2]
        blocks = generator.layout(F).blocks
        u = torch.rand((B, len(blocks)), generator=ctx.rng, device=ctx.rng.device).to(x0.device)
        sigma = per_block_values(shift_sigma(u, self.timestep_shift), blocks)  # (B, F)
        noise = ctx.randn_like(x0)
        x_sigma = add_noise(x0, noise, sigma)
        if self.teacher_forcing:
            v = generator.forward_teacher_forcing(x_sigma, sigma, ctx.context, clean=x0)
        else:
            v = generator(x_sigma, sigma, ctx.context)
        loss = (v.float() - velocity_target(x0, noise).float()).square().mean()
        return loss, {"diffusion_loss": loss.detach(), "diffusion_sigma": sigma.mean()}
