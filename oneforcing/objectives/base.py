"""The objective plugin contract (docs/methods.md, "Distillation").

An objective is a small ``nn.Module`` (so it may own parameters, e.g. a discriminator head) that declares
the roles it needs and returns its loss for the generator side and/or the critic side: one term, or named terms.
The ``DistillationModule`` sums ``weight · term`` over the enabled objectives, so One-Forcing is literally
``[DMD(weight=1), GAN(weight=0.03)]`` in YAML; a term with a weight of its own (the GAN's R1 and R2, the critic's
flow loss that shares its pass) is named in ``absolute_terms`` and counts once, unscaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

Loss = torch.Tensor | dict[str, torch.Tensor]  # one scalar term, or named scalar terms
Losses = tuple[Loss, dict[str, torch.Tensor]]  # (loss, metrics to log)
ROLES = ("generator", "teacher", "critic")
GROUND_TRUTH = ("pixels", "latents")  # the batch members the module turns into ``StepContext.real_latents``
MEMBER_SOURCES = {  # how a batch member gets into the shards (for the data check's fix)
    "pixels": "`oneforcing data toy`",
    "latents": "`oneforcing data encode`",
    "trajectory": "`oneforcing data trajectories`",
    "trajectory_sigmas": "`oneforcing data trajectories`",
    "ode_output": "`oneforcing data trajectories`",
}


@dataclass
class StepContext:
    """Everything an objective may read during one generator or critic step.

    ``rollout(grad)`` runs (and memoises per phase) the generator's self-forcing roll-out; objectives of
    the same phase share one roll-out, as in the reference trainers.
    """

    batch: dict
    context: torch.Tensor                 # (B, L, D) prompt embedding
    uncond_context: torch.Tensor | None   # (B, L, D) negative-prompt embedding (CFG); None without a teacher
    real_latents: torch.Tensor | None     # (B, F, C, H, W) ground truth, when the data carry it
    models: dict[str, nn.Module]          # role -> model
    rng: torch.Generator                  # every random draw of an objective comes from here
    iteration: int
    rollout_fn: object = None             # callable(grad: bool) -> Rollout
    _rollouts: dict = field(default_factory=dict)

    def rollout(self, grad: bool):
        if grad not in self._rollouts:
            self._rollouts[grad] = self.rollout_fn(grad)
        return self._rollouts[grad]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.rng, device=self.rng.device).to(x)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.rng, device=self.rng.device)


@dataclass(frozen=True)
class ModuleView:
    """What an objective's checks may read of the module it trains in (``check``, ``check_data``)."""

    objectives: Sequence["Objective"]          # every objective of the module, this one included
    num_layers: int                            # Wan blocks of the generator and the critic
    step_sigmas: Sequence[float]               # the student's warped steps, σ = 1 first
    first_block_sigmas: Sequence[float] | None  # the first block's own steps (first-frame enhancement)
    has_ema: bool                              # whether the module keeps an EMA of the generator (ema_start set)


class Objective(nn.Module):
    """Base class. Subclasses set ``roles`` and override one or both of the loss methods.

    ``solver``: how the generator this objective trains is sampled, when it decides ("euler": a diffusion model's
    ODE; None: the few-step students' re-noising sampler, ``StreamingSampler``'s default).

    ``absolute_terms``: the names of loss terms that carry their own weight and are not scaled by ``weight``.

    Args:
        weight: multiplier of this objective's loss terms in the sums.
    """

    roles: ClassVar[tuple[str, ...]] = ("generator",)
    solver: ClassVar[str | None] = None
    absolute_terms: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    @property
    def has_generator_loss(self) -> bool:
        return type(self).generator_loss is not Objective.generator_loss

    @property
    def has_critic_loss(self) -> bool:
        return type(self).critic_loss is not Objective.critic_loss

    def generator_loss(self, ctx: StepContext) -> Losses:
        raise NotImplementedError

    def critic_loss(self, ctx: StepContext) -> Losses:
        raise NotImplementedError

    def weighted(self, loss: Loss) -> torch.Tensor:
        """This objective's share of the sum: ``weight · loss``, or over named terms Σ ``weight · term`` with the
        ``absolute_terms`` counted as they are."""
        if isinstance(loss, torch.Tensor):
            return self.weight * loss
        if not loss:
            raise ValueError(f"{type(self).__name__} returned no loss terms; return a zero tensor for a step without one.")
        terms = [term if name in self.absolute_terms else self.weight * term for name, term in loss.items()]
        return torch.stack(terms).sum()

    def check(self, view: ModuleView) -> list[str]:
        """Problems with this objective in the module ``view`` describes (reported together before anything is built)."""
        return []

    def batch_members(self) -> list[tuple[str, ...]]:
        """The batch members this objective reads, each as its alternatives (one of them suffices): e.g.
        ``GROUND_TRUTH`` (pixels or latents, which the module turns into ``ctx.real_latents``). Prompts are read by
        every objective and are not listed."""
        return []

    def check_data(self, index: dict | None, view: ModuleView | None = None) -> list[str]:
        """Problems with the training data (the train split's index, None for plain dataloaders) for this objective
        in the module ``view`` describes (None: checks that need the module are skipped); reported together when
        fitting starts. Here: the ``batch_members`` the shards do not carry (an override extends this list)."""
        if index is None or index.get("members") is None:  # plain dataloaders, or shards from before the record
            return []
        carried = sorted(m.removesuffix(".safetensors") for m in index["members"] if m.endswith(".safetensors"))
        problems = []
        for alternatives in self.batch_members():
            if not set(alternatives) & set(carried):
                sources = sorted({MEMBER_SOURCES[a] for a in alternatives if a in MEMBER_SOURCES})
                problems.append(f"{self.describe()} reads {' or '.join(alternatives)} from the batch, but the training "
                                f"samples carry only {carried or 'prompts'}; train on shards written by "
                                f"{' or '.join(sources) or 'a command that writes it'}.")
        return problems

    def describe(self) -> str:
        """How this objective is named in messages (its class; subclasses add the setting that matters)."""
        return type(self).__name__

    def optimizer_settings(self) -> dict | None:
        """AdamW settings ({'lr', 'betas'}) for this objective's own parameters, or None: they train with the critic."""
        return None

    def shard_units(self) -> list[nn.Module]:
        """FSDP units (inner first) covering this objective's parameters; none by default."""
        return []

    def configure(self, critic) -> None:
        """Build parameters that depend on the critic's shapes (called once the roles exist)."""
