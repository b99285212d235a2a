"""Trajectory (ODE) distillation: regress the student's one-step x0 onto the teacher's ODE output.

CausVid arXiv 2412.07772 §4 (ODE initialisation); Causal Forcing (causal ODE); docs/algorithms.md §8.
    x_k = teacher trajectory state at snapshot σ_k (σ_k = the student's warped steps),
    x0_pred = x_k - σ_k·v_G(x_k, σ_k),        L = mean( (x0_pred - x_ODE)² )
Flavours:
  * ``bidirectional``: the snapshots come from the bidirectional teacher; one index per *block*; the
    student runs its block-causal full-sequence forward on the (noisy) trajectory states;
  * ``teacher_forcing``: one index shared by all frames; the student runs in teacher-forcing mode with a
    clean context (Causal Forcing stage 2): the ground-truth latents the causal teacher was forced on, or the
    ODE output itself for trajectories a teacher sampled over its own frames (``oneforcing data trajectories
    --teacher exact --autoregressive``), where frame f's output continues the output's earlier frames.
"""

from __future__ import annotations

from typing import Literal

import torch

from oneforcing.models.flow_matching import x0_from_velocity
from oneforcing.objectives.base import GROUND_TRUTH, Losses, ModuleView, Objective, StepContext


def per_block_values(values: torch.Tensor, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """(B, num_blocks) -> (B, F), repeating each block's value over its frames."""
    sizes = torch.tensor([n for _, n in blocks], device=values.device)
    return values.repeat_interleave(sizes, dim=1)


class TrajectoryDistillation(Objective):
    """ODE regression onto teacher trajectories (batches carry ``trajectory``, ``trajectory_sigmas``, ``ode_output``).

    Args:
        weight: loss weight.
        flavour: ``bidirectional`` (per-block snapshot, block-causal forward) or ``teacher_forcing``
            (shared snapshot, clean context).
        clean_context: the teacher-forcing flavour's clean frames: ``ground_truth`` (the batch's latents) or
            ``ode_output`` (the trajectory's own output).
    """

    roles = ("generator",)

    def __init__(self, weight: float = 1.0, flavour: Literal["bidirectional", "teacher_forcing"] = "bidirectional",
                 clean_context: Literal["ground_truth", "ode_output"] = "ground_truth") -> None:
        super().__init__(weight)
        if clean_context not in ("ground_truth", "ode_output"):
            raise ValueError(f"clean_context={clean_context!r}: use 'ground_truth' or 'ode_output'.")
        if clean_context != "ground_truth" and flavour != "teacher_forcing":
            raise ValueError("clean_context applies to flavour='teacher_forcing' only; the bidirectional flavour's "
                             "context is the noisy trajectory states.")
        self.flavour, self.clean_context = flavour, clean_context

    def batch_members(self) -> list[tuple[str, ...]]:
        members = [("trajectory",), ("trajectory_sigmas",), ("ode_output",)]
        if self.flavour == "teacher_forcing" and self.clean_context == "ground_truth":
            members.append(GROUND_TRUTH)
        return members

    def check_data(self, index: dict | None, view: ModuleView | None = None) -> list[str]:
        """Trajectory shards whose snapshots sit at the student's warped steps (docs/algorithms.md §2, §8), and a clean
        context that autoregressive trajectories continue."""
        if index is None:
            return []  # plain dataloaders carry no shard index to check against
        snapshots = index.get("snapshot_sigmas")
        if snapshots is None:
            return ["TrajectoryDistillation needs trajectory shards (written by `oneforcing data trajectories`); the "
                    "train split's index.json records no snapshot_sigmas."]
        problems = super().check_data(index, view)
        steps = list(view.step_sigmas) if view is not None else snapshots
        if len(snapshots) != len(steps) or any(abs(a - b) > 1e-5 for a, b in zip(snapshots, steps)):
            problems.append(
                f"The trajectory snapshots σ={[round(s, 4) for s in snapshots]} do not match the student's steps "
                f"σ={[round(s, 4) for s in steps]}; set denoising_steps to the nominal steps the trajectories were "
                "exported with (e.g. [1000, 750, 500, 250]) and the same warp_shift.")
        if index.get("order") == "autoregressive" and self.flavour == "teacher_forcing" and \
                self.clean_context == "ground_truth":
            problems.append("the trajectories were sampled autoregressively over the teacher's own frames, so their "
                            "ground truth is not the context their outputs continue: set clean_context: ode_output on "
                            "TrajectoryDistillation.")
        return problems

    def generator_loss(self, ctx: StepContext) -> Losses:
        batch = ctx.batch
        for key in ("trajectory", "trajectory_sigmas", "ode_output"):
            if key not in batch:
                raise KeyError(f"TrajectoryDistillation needs '{key}' in the batch; train on shards written by "
                               "`oneforcing data trajectories`.")
        trajectory, sigmas, target = batch["trajectory"], batch["trajectory_sigmas"], batch["ode_output"]
        B, K, F = trajectory.shape[:3]
        generator = ctx.models["generator"]
        if self.flavour == "bidirectional":
            blocks = generator.layout(F).blocks
            index = per_block_values(torch.randint(0, K, (B, len(blocks)), generator=ctx.rng,
                                                   device=ctx.rng.device).to(trajectory.device), blocks)  # (B, F)
        else:
            index = torch.randint(0, K, (B, 1), generator=ctx.rng, device=ctx.rng.device).to(trajectory.device).expand(B, F)
        gather = index[:, None, :, None, None, None].expand(B, 1, F, *trajectory.shape[3:])
        x_k = trajectory.gather(1, gather).squeeze(1)      # (B, F, C, H, W)
        sigma = sigmas.gather(1, index)                    # (B, F)
        if self.flavour == "bidirectional":
            v = generator(x_k, sigma, ctx.context)
        else:
            clean = target if self.clean_context == "ode_output" else ctx.real_latents
            if clean is None:
                raise KeyError("TrajectoryDistillation(flavour='teacher_forcing') needs ground-truth latents in the batch.")
            v = generator.forward_teacher_forcing(x_k, sigma, ctx.context, clean=clean.to(x_k.dtype))
        x0_pred = x0_from_velocity(x_k, v, sigma)
        loss = (x0_pred.float() - target.float()).square().mean()
        return loss, {"ode_loss": loss.detach(), "ode_sigma": sigma.mean()}
