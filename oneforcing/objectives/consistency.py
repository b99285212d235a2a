"""Causal consistency distillation (Causal Forcing stage 2b), the trajectory-style 1-step baseline.

Causal Forcing (CF++) as described in docs/algorithms.md §12; consistency models arXiv 2303.01469 eq. 7.
    grid σ_0 = 1 > … > σ_{N-1}: the N-step Euler grid at the shift (48 steps, s = 5 by default)
    k ~ U{0..N-2};  σ = σ_k, σ' = σ_{k+1} (one value for every frame)
    x_σ  = (1-σ)·x_gt + σ·ε
    x_σ' = x_σ + (σ' - σ)·v_teacher(x_σ, σ)          (one CFG Euler step of the teacher, no gradient)
    v_teacher = uncond + w·(cond - uncond),  w = 3   (Causal Forcing's CD teacher: the *standard* CFG form
                                                     with weight 3, unlike its DMD real score's g = 3, i.e. w = 4)
    L_CD = mean( (x0_G(x_σ, σ) - sg(x0_EMA(x_σ', σ')))² )
The student and the EMA target run in teacher-forcing mode with the ground-truth clean context (or the
block-causal forward with ``teacher_forcing: false``). No boundary condition at the smallest σ (as in CF).
CF's teacher is causal and steps in teacher-forcing mode too (``causal_teacher``): frame f's step then sees the
clean frames the student sees. A bidirectional teacher steps all frames jointly, so frame f's step depends on
the noisy frames after f, which the student never sees: its targets are not a function of the student's inputs.
"""

from __future__ import annotations

from typing import Literal

import torch

from oneforcing.models.flow_matching import add_noise, euler_sigmas, x0_from_velocity
from oneforcing.objectives.base import GROUND_TRUTH, Losses, ModuleView, Objective, StepContext
from oneforcing.sampling.euler import guided_velocity, teacher_forcing_velocity


class ConsistencyDistillation(Objective):
    """Discrete-grid consistency distillation with the generator's EMA as the target network.

    Args:
        weight: loss weight.
        num_grid_steps: the discrete grid (48 in Causal Forcing).
        grid_shift: its shift (5).
        guidance_scale: teacher CFG weight w in uncond + w·(cond − uncond). Causal Forcing's CD teacher uses
            uncond + 3·(cond − uncond), i.e. w = 3 (its "guidance 3.0" is in the standard form here, not the
            DMD form cond + g·(cond − uncond)).
        teacher_forcing: student and target see the ground-truth clean earlier blocks.
        causal_teacher: the teacher's Euler step in teacher-forcing mode on the same clean context (Causal
            Forcing; needs a teacher with ``forward_teacher_forcing``: the exact toy teacher's causal posterior
            or a causal Wan). False: the teacher steps all frames jointly (a bidirectional teacher).
        ground_truth: the clean videos x_gt (noised, and the clean context): the batch's ``data`` (its latents or
            pixels) or the ``ode_output`` of trajectory shards. The exact toy teacher's causal posterior is exact
            on its own samples (``oneforcing data trajectories --teacher exact --autoregressive``), while a world
            video's clean frames pin it to the nearest bank video, whose next frame is not the video's.
    """

    roles = ("generator", "teacher")

    def __init__(self, weight: float = 1.0, num_grid_steps: int = 48, grid_shift: float = 5.0,
                 guidance_scale: float = 3.0, teacher_forcing: bool = True, causal_teacher: bool = False,
                 ground_truth: Literal["data", "ode_output"] = "data") -> None:
        super().__init__(weight)
        if num_grid_steps < 2:
            raise ValueError(f"num_grid_steps={num_grid_steps}: the consistency grid needs at least 2 steps.")
        if causal_teacher and not teacher_forcing:
            raise ValueError("causal_teacher steps the teacher in teacher-forcing mode on the student's clean context; "
                             "set teacher_forcing: true as well, or causal_teacher: false.")
        if ground_truth not in ("data", "ode_output"):
            raise ValueError(f"ground_truth={ground_truth!r}: use 'data' or 'ode_output'.")
        self.causal_teacher, self.ground_truth = causal_teacher, ground_truth
        self.num_grid_steps, self.grid_shift = num_grid_steps, grid_shift
        self.guidance_scale, self.teacher_forcing = guidance_scale, teacher_forcing

    def batch_members(self) -> list[tuple[str, ...]]:
        return [("ode_output",)] if self.ground_truth == "ode_output" else [GROUND_TRUTH]

    @property
    def grid(self) -> torch.Tensor:
        return euler_sigmas(self.num_grid_steps, self.grid_shift)[:-1].float()  # (N,), without the final 0

    def check(self, view: ModuleView) -> list[str]:
        problems = []
        if not view.has_ema:
            problems.append("ConsistencyDistillation regresses onto the generator's EMA: set ema_start (e.g. 0)")
        grid = self.grid.double()
        for sigma in [*(view.first_block_sigmas or []), *view.step_sigmas]:
            if float((grid - sigma).abs().min()) > 1e-5:
                problems.append(
                    f"the student's step σ={sigma:.4f} is not on the {self.num_grid_steps}-step consistency grid at "
                    f"shift {self.grid_shift}; use a grid that contains the warped steps (48 steps at the same shift "
                    "contains [1000, 750, 500, 250])")
                break
        return problems

    def _x0(self, model, x: torch.Tensor, sigma: torch.Tensor, ctx: StepContext, clean: torch.Tensor) -> torch.Tensor:
        s = sigma[:, None].expand(-1, x.shape[1])  # (B, F)
        if self.teacher_forcing:
            v = model.forward_teacher_forcing(x, s, ctx.context, clean=clean)
        else:
            v = model(x, s, ctx.context)
        return x0_from_velocity(x, v, s)

    def generator_loss(self, ctx: StepContext) -> Losses:
        if self.ground_truth == "ode_output":
            if "ode_output" not in ctx.batch:
                raise KeyError("ConsistencyDistillation(ground_truth='ode_output') trains on trajectory shards "
                               "(`oneforcing data trajectories`); this batch has no 'ode_output'.")
            x_gt = ctx.batch["ode_output"].float()
        else:
            x_gt = ctx.real_latents
        if x_gt is None:
            raise KeyError("ConsistencyDistillation needs ground-truth latents (pixels or latents) in the batch.")
        B = x_gt.shape[0]
        grid = self.grid.to(x_gt.device)
        k = torch.randint(0, len(grid) - 1, (B,), generator=ctx.rng, device=ctx.rng.device).to(x_gt.device)
        sigma, sigma_next = grid[k], grid[k + 1]
        x_sigma = add_noise(x_gt, ctx.randn_like(x_gt), sigma)
        teacher = ctx.models["teacher"]
        if self.causal_teacher:
            if not hasattr(teacher, "forward_teacher_forcing"):
                raise TypeError(f"ConsistencyDistillation(causal_teacher=True) needs a causal teacher with a "
                                f"teacher-forcing mode; {type(teacher).__name__} is bidirectional. Use the exact toy "
                                "teacher (model.init_args.teacher) or set causal_teacher: false.")
            teacher = teacher_forcing_velocity(teacher, x_gt)
        with torch.no_grad():
            v = guided_velocity(teacher, x_sigma, sigma, ctx.context, ctx.uncond_context, self.guidance_scale)
            x_next = x_sigma + (sigma_next - sigma).view(B, 1, 1, 1, 1) * v  # Euler step to the next grid point
            target = self._x0(ctx.models["generator_ema"], x_next, sigma_next, ctx, x_gt)
        prediction = self._x0(ctx.models["generator"], x_sigma, sigma, ctx, x_gt)
        loss = (prediction.float() - target.float()).square().mean()
        return loss, {"cd_loss": loss.detach(), "cd_sigma": sigma.mean()}
