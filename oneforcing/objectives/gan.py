"""One-Forcing's auxiliary GAN on the critic: the fake-score network doubles as a discriminator.

One-Forcing arXiv 2605.23458 §3 (DMD + GAN); docs/algorithms.md §11. With D(x_σ, σ) the logit of the
discriminator head on the critic's features and softplus(z) = log(1 + e^z):
    generator:      L_G = mean softplus(-D(x_fake,σ))                        (non-saturating; critic frozen)
    discriminator:  L_D = mean softplus(-D(x_real,σ)) + mean softplus(D(x_fake,σ))
                    with x_fake,σ and x_real,σ noised by the SAME ε at the SAME σ, scored in one 2B batch
    relativistic:   L_D = mean softplus(-(D_real - D_fake)),  L_G = mean softplus(-(D_fake - D_real))
    R1 ("apt"):     Δ1 = D(x_real,σ + σ1·η) - D(x_real,σ),  L_R1 = r1_weight · mean Δ1²
    R1 (divided):   Δ1 / σ1 instead of Δ1, and L_R1 enters with a factor ½
    R2:             Δ2 = (D(x_fake,σ + σ2·η) - D(x_fake,σ)) / σ2,  L_R2 = r2_weight · mean Δ2², factor ½
σ is drawn like the critic's (U{0..999}/1000, critic shift, clamp [0.02, 0.98]), separately from DMD's.
The module multiplies both sides by ``weight`` (0.03 in the paper: gan_g_weight = gan_d_weight); the R1/R2
weights are the paper's absolute ones, so R1, R2 (and the shared pass's flow loss, weight 1) are returned as
named ``absolute_terms`` that the module counts unscaled.

Cost options (not in the reference; both off by default, measured in benchmarks/distillation_recipes.py):
    shared_flow_pass:  the critic's flow-matching loss L_flow = mean (v(x_fake,σ) - (ε - x_fake))² is read
                       from the fake half of the same 2B pass (one 2B forward instead of B + 2B), so the flow
                       loss uses the discriminator's σ and ε instead of its own draw (same distribution).
    discriminator_update_every: L_D (and R1/R2) only on every k-th critic step, like the reference's
                       separate-discriminator schedule (one D slot per generator_update_every iterations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from oneforcing.models.discriminator import DiscriminatorHead
from oneforcing.models.flow_matching import add_noise, velocity_target
from oneforcing.objectives.base import GROUND_TRUTH, Losses, ModuleView, Objective, StepContext
from oneforcing.objectives.dmd import DMD, critic_flow_loss
from oneforcing.objectives.timesteps import sample_score_sigma


def r1_penalty(d_real: torch.Tensor, d_real_perturbed: torch.Tensor, sigma1: float, kind: str) -> torch.Tensor:
    """Finite-difference R1 on real data: 'apt' mean(Δ²), 'divided' ½·mean((Δ/σ1)²)."""
    delta = d_real_perturbed - d_real
    return delta.square().mean() if kind == "apt" else 0.5 * (delta / sigma1).square().mean()


def r2_penalty(d_fake: torch.Tensor, d_fake_perturbed: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Finite-difference R2 on fake data: ½·mean(((D(x+σ2η) - D(x)) / σ2)²)."""
    return 0.5 * ((d_fake_perturbed - d_fake) / sigma2).square().mean()


class GAN(Objective):
    """Non-saturating (or relativistic) GAN with a register-token discriminator head on the critic.

    Args:
        weight: multiplier of L_G and L_D (the paper's 0.03).
        feature_layers: critic blocks whose outputs the head pools (0-based; [21, 29] framewise on Wan 1.3B).
        num_registers: register tokens, one per feature layer.
        head_ffn_dim, head_num_heads: the pooling blocks' FFN width and heads.
        relativistic: relativistic pairing of real and fake logits.
        r1_weight, r1_sigma, r1_kind: finite-difference R1 on real data (0 disables).
        r2_weight, r2_sigma: finite-difference R2 on fake data (0 disables).
        critic_timestep_shift: shift of the σ draw.
        real_source: 'data' (the batch's ground-truth latents) or 'ode' (the teacher's ODE outputs).
        head_lr, head_betas: give the head its own AdamW at this learning rate (None: the head trains with the
            critic's optimizer, the reference default).
        shared_flow_pass: also compute the critic's flow-matching loss (weight 1) from the discriminator's
            2B pass; set DMD's ``train_critic: false`` so that it is not counted twice.
        discriminator_update_every: the discriminator loss on every k-th critic step only (1: every step).
    """

    roles = ("generator", "critic")
    absolute_terms = ("critic_flow", "r1", "r2")  # weight 1, r1_weight, r2_weight: not scaled by ``weight``

    def __init__(self, weight: float = 0.03, feature_layers: Sequence[int] = (3, 5), num_registers: int = 2,
                 head_ffn_dim: int = 256, head_num_heads: int = 4, relativistic: bool = False,
                 r1_weight: float = 0.0, r1_sigma: float = 0.1, r1_kind: Literal["apt", "divided"] = "apt",
                 r2_weight: float = 0.0, r2_sigma: float = 0.01, critic_timestep_shift: float = 5.0,
                 real_source: Literal["data", "ode"] = "data", head_lr: float | None = None,
                 head_betas: tuple[float, float] = (0.0, 0.999), shared_flow_pass: bool = False,
                 discriminator_update_every: int = 1) -> None:
        super().__init__(weight)
        if weight <= 0:
            raise ValueError(f"GAN weight={weight} must be > 0 (remove the objective to disable it).")
        if num_registers != len(feature_layers):
            raise ValueError(f"GAN: {num_registers} registers for {len(feature_layers)} feature layers "
                             f"{list(feature_layers)}; set num_registers: {len(feature_layers)}.")
        if discriminator_update_every < 1:
            raise ValueError(f"GAN discriminator_update_every={discriminator_update_every} must be >= 1.")
        if head_lr is not None and head_lr <= 0:
            raise ValueError(f"GAN head_lr={head_lr} must be > 0 (or null: the critic's optimizer).")
        self.feature_layers, self.num_registers = list(feature_layers), num_registers
        self.head_ffn_dim, self.head_num_heads = head_ffn_dim, head_num_heads
        self.relativistic = relativistic
        self.r1_weight, self.r1_sigma, self.r1_kind = r1_weight, r1_sigma, r1_kind
        self.r2_weight, self.r2_sigma = r2_weight, r2_sigma
        self.critic_timestep_shift, self.real_source = critic_timestep_shift, real_source
        self.head_lr, self.head_betas = head_lr, tuple(head_betas)
        self.shared_flow_pass, self.discriminator_update_every = shared_flow_pass, discriminator_update_every
        self.head: DiscriminatorHead | None = None

    def configure(self, critic) -> None:
        """Build the head once the critic exists (its width and depth fix the head's shapes)."""
        if self.head is None:
            cfg = critic.config
            self.head = DiscriminatorHead(cfg.dim, cfg.num_layers, self.feature_layers, self.num_registers,
                                          self.head_ffn_dim, self.head_num_heads)

    def shard_units(self) -> list[nn.Module]:
        return self.head.shard_units() if self.head is not None else []

    def check(self, view: ModuleView) -> list[str]:
        num_layers = view.num_layers
        problems = [f"GAN feature layer {layer} does not exist in the critic ({num_layers} blocks: 0..{num_layers - 1})"
                    for layer in self.feature_layers if not 0 <= layer < num_layers]
        if self.shared_flow_pass and any(isinstance(o, DMD) and o.train_critic for o in view.objectives):
            problems.append("GAN(shared_flow_pass=true) computes the critic's flow loss itself, and DMD trains it too; "
                            "set DMD's train_critic: false (or shared_flow_pass: false)")
        return problems

    def optimizer_settings(self) -> dict | None:
        """The head's own AdamW settings, or None when it trains with the critic's optimizer."""
        return None if self.head_lr is None else {"lr": self.head_lr, "betas": self.head_betas}

    def batch_members(self) -> list[tuple[str, ...]]:
        return [("ode_output",)] if self.real_source == "ode" else [GROUND_TRUTH]

    def describe(self) -> str:
        return f"{'relativistic GAN' if self.relativistic else 'GAN'}(real_source={self.real_source!r})"

    def check_data(self, index: dict | None, view: ModuleView | None = None) -> list[str]:
        """Before training: the real samples this objective needs must be in the data."""
        if index is None:
            return []
        if problems := super().check_data(index, view):
            return problems
        if self.real_source == "ode" and index.get("kind") != "trajectories":
            return ["GAN(real_source='ode') needs trajectory shards (with ode_output); the train split holds "
                    f"{index.get('kind', index.get('world', 'videos'))} data. Use real_source: data, or train on "
                    "`oneforcing data trajectories` output"]
        return []

    def real_latents(self, ctx: StepContext) -> torch.Tensor:
        real = ctx.batch.get("ode_output") if self.real_source == "ode" else ctx.real_latents
        if real is None:
            raise KeyError(f"GAN(real_source='{self.real_source}') found no real latents in the batch "
                           f"({'ode_output' if self.real_source == 'ode' else 'pixels or latents'}).")
        return real

    def scores(self, ctx: StepContext, x: torch.Tensor, sigma: torch.Tensor,
               context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B,), the critic's velocity (B, F, C, H, W)) from one critic pass."""
        logits, velocity = self.head(ctx.models["critic"], x, sigma, context)
        return logits.float().squeeze(-1), velocity

    def logits(self, ctx: StepContext, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.scores(ctx, x, sigma, context)[0]  # (B,)

    def generator_loss(self, ctx: StepContext) -> Losses:
        fake = ctx.rollout(grad=True).latents
        B = fake.shape[0]
        sigma = sample_score_sigma(B, ctx.rng, self.critic_timestep_shift).to(fake.device)
        fake_sigma = add_noise(fake, ctx.randn_like(fake), sigma)
        if self.relativistic:
            real = self.real_latents(ctx)
            real_sigma = add_noise(real, ctx.randn_like(real), sigma)  # independent ε, as in the reference
            both = self.logits(ctx, torch.cat([fake_sigma, real_sigma]), sigma.repeat(2), ctx.context.repeat(2, 1, 1))
            d_fake, d_real = both.chunk(2)
            loss = F.softplus(-(d_fake - d_real)).mean()
        else:
            d_fake = self.logits(ctx, fake_sigma, sigma, ctx.context)
            loss = F.softplus(-d_fake).mean()
        return loss, {"gan_g_loss": loss.detach(), "gan_g_fake_logit": d_fake.mean().detach()}

    def critic_loss(self, ctx: StepContext) -> Losses:
        fake = ctx.rollout(grad=False).latents.detach()
        discriminator_due = ctx.iteration % self.discriminator_update_every == 0
        if not discriminator_due:
            if not self.shared_flow_pass:
                return torch.zeros((), device=fake.device), {}
            flow, logs = critic_flow_loss(ctx, self.critic_timestep_shift)
            return {"critic_flow": flow}, logs
        real = self.real_latents(ctx).to(fake)
        if real.shape != fake.shape:
            raise ValueError(f"GAN real latents {tuple(real.shape)} and generated {tuple(fake.shape)} differ; "
                             "set num_frames and frame_size to the data's.")
        B = fake.shape[0]
        sigma = sample_score_sigma(B, ctx.rng, self.critic_timestep_shift).to(fake.device)
        noise = ctx.randn_like(fake)  # one ε for both halves
        fake_sigma, real_sigma = add_noise(fake, noise, sigma), add_noise(real, noise, sigma)
        logits, velocity = self.scores(ctx, torch.cat([fake_sigma, real_sigma]), sigma.repeat(2),
                                       ctx.context.repeat(2, 1, 1))  # (2B,), (2B, F, C, H, W)
        d_fake, d_real = logits.chunk(2)
        if self.relativistic:
            loss_d = F.softplus(-(d_real - d_fake)).mean()
        else:
            loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        logs = {"gan_d_loss": loss_d.detach(), "gan_real_logit": d_real.mean().detach(),
                "gan_fake_logit": d_fake.mean().detach(), "gan_sigma": sigma.mean()}
        terms = {"gan_d": loss_d}
        if self.shared_flow_pass:
            flow = (velocity[:B].float() - velocity_target(fake, noise).float()).square().mean()
            terms["critic_flow"] = flow
            logs.update(critic_flow_loss=flow.detach(), critic_sigma=sigma.mean())
        if self.r1_weight > 0:
            perturbed = self.logits(ctx, real_sigma + self.r1_sigma * ctx.randn_like(real_sigma), sigma, ctx.context)
            terms["r1"] = self.r1_weight * r1_penalty(d_real, perturbed, self.r1_sigma, self.r1_kind)
            logs["gan_r1"] = terms["r1"].detach()
        if self.r2_weight > 0:
            perturbed = self.logits(ctx, fake_sigma + self.r2_sigma * ctx.randn_like(fake_sigma), sigma, ctx.context)
            terms["r2"] = self.r2_weight * r2_penalty(d_fake, perturbed, self.r2_sigma)
            logs["gan_r2"] = terms["r2"].detach()
        return terms, logs
