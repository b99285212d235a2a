"""Distribution matching distillation (DMD), as trained by Self-Forcing and One-Forcing.

arXiv 2311.18828 (DMD) eq. 7-8; Self-Forcing arXiv 2506.08009 §3; docs/algorithms.md §10.

Generator side, on the roll-out x (with gradient at the exit step):
    σ ~ shifted U[0.02, 0.98],  x_σ = (1-σ)·x + σ·ε
    fake = critic x0(x_σ),  real = teacher x0 with CFG: uncond + w·(cond - uncond)      (no gradient)
    grad = (fake - real) / mean_{F,C,H,W} |x - real|            (normaliser per sample, DMD eq. 8)
    L_DMD = ½ · mean_mask( (x - sg(x - grad))² )                ⇒ dL/dx = grad / N_mask
Critic side, on a fresh no-grad roll-out x:
    L_critic = mean( (v_critic(x_σ, σ) - (ε - x))² )             (flow-matching loss, float32)

Symbols: x = ``x``, real score = ``real_x0``, fake score = ``fake_x0``, w = ``guidance_scale``
(the papers' g = w - 1: Self-Forcing g=3 is w=4, One-Forcing g=5 is w=6).
"""

from __future__ import annotations

import torch

from oneforcing.models.flow_matching import add_noise, velocity_target, x0_from_velocity
from oneforcing.objectives.base import Losses, Objective, StepContext
from oneforcing.objectives.timesteps import sample_score_sigma
from oneforcing.sampling.euler import guided_velocity


def dmd_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(fake - real) / normaliser, the normaliser a per-sample mean of |x - real| over (F, C, H, W).

    The per-sample normaliser follows the Self-Forcing / One-Forcing code; FastVideo's per-batch mean agrees
    with it only at batch size 1.
    """
    normaliser = (x - real_x0).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(eps)  # (B, 1, 1, 1, 1)
    return torch.nan_to_num((fake_x0 - real_x0) / normaliser)


def dmd_surrogate_loss(x: torch.Tensor, grad: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """½·mean over the masked elements of (x - sg(x - grad))², whose gradient w.r.t. x is grad / N_mask."""
    target = (x - grad).detach()
    squared = (x.float() - target.float()).square()  # (B, F, C, H, W)
    if frame_mask is None:
        return 0.5 * squared.mean()
    frames = frame_mask.nonzero().flatten().to(x.device)  # indices, found where the mask is (no meta-device nonzero)
    selected = squared.index_select(1, frames)  # (B, F_window, C, H, W)
    return 0.5 * selected.mean()


def critic_flow_loss(ctx: StepContext, shift: float, min_timestep: float = 20.0, max_timestep: float = 980.0) -> Losses:
    """The fake score tracks the generator: flow matching on a fresh no-grad roll-out."""
    x = ctx.rollout(grad=False).latents.detach()
    sigma = sample_score_sigma(x.shape[0], ctx.rng, shift, min_timestep, max_timestep).to(x.device)
    noise = ctx.randn_like(x)
    v = ctx.models["critic"](add_noise(x, noise, sigma), sigma, ctx.context)
    loss = (v.float() - velocity_target(x, noise).float()).square().mean()
    return loss, {"critic_flow_loss": loss.detach(), "critic_sigma": sigma.mean()}


class DMD(Objective):
    """DMD generator loss and the critic's flow-matching loss.

    Args:
        weight: weight of both losses in their sums.
        guidance_scale: teacher CFG weight w (uncond + w·(cond − uncond)); the papers' g is w − 1.
        timestep_shift: shift of the σ draw for the DMD loss (5 in the papers).
        critic_timestep_shift: shift of the σ draw for the critic's flow loss.
        min_timestep, max_timestep: clamp of the σ draws, in units of t = 1000·σ.
        train_critic: also return the critic's flow-matching loss (set False when another objective trains it).
    """

    roles = ("generator", "teacher", "critic")

    def __init__(self, weight: float = 1.0, guidance_scale: float = 4.0, timestep_shift: float = 5.0,
                 critic_timestep_shift: float = 5.0, min_timestep: float = 20.0, max_timestep: float = 980.0,
                 train_critic: bool = True) -> None:
        super().__init__(weight)
        if not 0 <= min_timestep < max_timestep <= 1000:
            raise ValueError(f"DMD needs 0 <= min_timestep < max_timestep <= 1000, got {min_timestep}, {max_timestep}.")
        self.guidance_scale = guidance_scale
        self.timestep_shift, self.critic_timestep_shift = timestep_shift, critic_timestep_shift
        self.min_timestep, self.max_timestep = min_timestep, max_timestep
        self.train_critic = train_critic

    def generator_loss(self, ctx: StepContext) -> Losses:
        rollout = ctx.rollout(grad=True)
        x = rollout.latents  # (B, F, C, H, W), graph through the exit steps
        B = x.shape[0]
        sigma = sample_score_sigma(B, ctx.rng, self.timestep_shift, self.min_timestep, self.max_timestep).to(x.device)
        with torch.no_grad():
            x_sigma = add_noise(x.detach(), ctx.randn_like(x), sigma)
            fake_x0 = x0_from_velocity(x_sigma, ctx.models["critic"](x_sigma, sigma, ctx.context), sigma)
            v_real = guided_velocity(ctx.models["teacher"], x_sigma, sigma, ctx.context, ctx.uncond_context,
                                     self.guidance_scale)
            real_x0 = x0_from_velocity(x_sigma, v_real, sigma)
            grad = dmd_gradient(x.detach().float(), real_x0.float(), fake_x0.float())
        loss = dmd_surrogate_loss(x, grad, rollout.grad_frames)
        return loss, {"dmd_loss": loss.detach(), "dmd_gradient_norm": grad.abs().mean(), "dmd_sigma": sigma.mean()}

    def critic_loss(self, ctx: StepContext) -> Losses:
        return critic_flow_loss(ctx, self.critic_timestep_shift, self.min_timestep, self.max_timestep)

    @property
    def has_critic_loss(self) -> bool:
        return self.train_critic
