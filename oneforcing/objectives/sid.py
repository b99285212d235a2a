"""Score identity distillation (SiD) as a DMD-family generator loss.

SiD arXiv 2404.04057 eq. 23 (α-weighted); Self-Forcing's sid variant; docs/algorithms.md §13.
    x_σ = (1-σ)·x + σ·ε          (not detached: the gradient reaches x through x_σ too)
    f = critic x0(x_σ),  r = teacher x0 with CFG (uncond + w·(cond − uncond)),   both with gradient to x
    L_SiD = mean( (r - f) ⊙ ((r - x) - α·(r - f)) / sg(mean_{F,C,H,W} |x - r|) )   (normaliser per sample)
The critic trains with the same flow-matching loss as DMD's.
"""

from __future__ import annotations

import torch

from oneforcing.models.flow_matching import add_noise, x0_from_velocity
from oneforcing.objectives.base import Losses, Objective, StepContext
from oneforcing.objectives.dmd import critic_flow_loss
from oneforcing.objectives.timesteps import sample_score_sigma
from oneforcing.sampling.euler import guided_velocity


def sid_loss(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, alpha: float = 1.0,
             eps: float = 1e-6) -> torch.Tensor:
    """mean((r - f)·((r - x) - α(r - f)) / sg(per-sample mean|x - r|)) over (B, F, C, H, W), float32."""
    x, real_x0, fake_x0 = x.float(), real_x0.float(), fake_x0.float()
    normaliser = (x - real_x0).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(eps).detach()
    return ((real_x0 - fake_x0) * ((real_x0 - x) - alpha * (real_x0 - fake_x0)) / normaliser).mean()


class SiD(Objective):
    """SiD generator loss (gradient through both score networks, whose weights stay frozen) + critic flow loss.

    Args:
        weight: loss weight.
        alpha: SiD's α (1.0 in Self-Forcing's config).
        guidance_scale: teacher CFG weight w; the papers' g = w − 1.
        timestep_shift, critic_timestep_shift, min_timestep, max_timestep: σ draws as for DMD.
    """

    roles = ("generator", "teacher", "critic")

    def __init__(self, weight: float = 1.0, alpha: float = 1.0, guidance_scale: float = 4.0,
                 timestep_shift: float = 5.0, critic_timestep_shift: float = 5.0, min_timestep: float = 20.0,
                 max_timestep: float = 980.0) -> None:
        super().__init__(weight)
        self.alpha, self.guidance_scale = alpha, guidance_scale
        self.timestep_shift, self.critic_timestep_shift = timestep_shift, critic_timestep_shift
        self.min_timestep, self.max_timestep = min_timestep, max_timestep

    def generator_loss(self, ctx: StepContext) -> Losses:
        x = ctx.rollout(grad=True).latents
        sigma = sample_score_sigma(x.shape[0], ctx.rng, self.timestep_shift, self.min_timestep,
                                   self.max_timestep).to(x.device)
        x_sigma = add_noise(x, ctx.randn_like(x), sigma)
        fake_x0 = x0_from_velocity(x_sigma, ctx.models["critic"](x_sigma, sigma, ctx.context), sigma)
        v_real = guided_velocity(ctx.models["teacher"], x_sigma, sigma, ctx.context, ctx.uncond_context,
                                 self.guidance_scale)
        real_x0 = x0_from_velocity(x_sigma, v_real, sigma)
        loss = sid_loss(x, real_x0, fake_x0, self.alpha)
        return loss, {"sid_loss": loss.detach(), "sid_sigma": sigma.mean()}

    def critic_loss(self, ctx: StepContext) -> Losses:
        return critic_flow_loss(ctx, self.critic_timestep_shift, self.min_timestep, self.max_timestep)
