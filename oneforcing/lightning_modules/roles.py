"""The roles of a ``DistillationModule`` (generator, its EMA, critic, teacher): how they are built, and how the
engines see them (FSDP2 units, DeepSpeed engines, frozen partitions)."""

from __future__ import annotations

import copy

from torch import nn

from oneforcing.engines.deepspeed import EngineRole, FrozenRole
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.lora import apply_lora, set_trainable
from oneforcing.models.sharded import reshard
from oneforcing.models.wan import WanBackbone


def build_roles(module, load_weights: bool = True) -> None:
    """The roles ``module``'s objectives need, their initial weights loaded unless ``load_weights`` is False (e.g. on
    the meta device, where ``oneforcing plan`` builds them to count their sizes), LoRA and checkpointing applied."""
    hp = module.hparams
    module.generator = _started(CausalWanBackbone(module.backbone_config, block_size=hp.block_size,
                                                  first_block_size=hp.first_block_size),
                                hp.generator_weights or hp.model_dir or hp.teacher_weights, module.generator_lora,
                                load_weights)
    if module.teacher is not None:
        module.teacher.requires_grad_(False).eval()
    elif "teacher" in module.roles:
        module.teacher = WanBackbone(module.teacher_config)
        if load_weights:
            module.teacher.load_weights(hp.teacher_weights or hp.model_dir)
        module.teacher.requires_grad_(False).eval()
    if "critic" in module.roles:
        module.critic = _started(WanBackbone(module.backbone_config),
                                 hp.critic_weights or hp.model_dir or hp.teacher_weights, module.critic_lora, load_weights)
    if hp.ema_start is not None:
        module.generator_ema = copy.deepcopy(module.generator).requires_grad_(False)
    trainable = {"generator": module.generator, "critic": module.critic}
    for role in hp.activation_checkpointing:  # the EMA copy is used without gradients: nothing to recompute
        trainable[role].enable_activation_checkpointing()
    for objective in module.objectives:
        objective.configure(module.critic)


def _started(role: nn.Module, weights: str | None, lora, load_weights: bool) -> nn.Module:
    """A trainable role with its initial ``weights`` (when given and loading) and its LoRA adapters (when set)."""
    if weights and load_weights:
        role.load_weights(weights)
    if lora:
        apply_lora(role, lora)
    return role


def shard_units(module) -> list[nn.Module]:
    """FSDP units of every role (``oneforcing.engines.fsdp2``): each Wan block and transformer of the generator, its
    EMA, the critic and a Wan teacher (frozen: sharded, no optimizer), and the objectives' heads."""
    roles = (module.generator, module.generator_ema, module.critic,
             module.teacher if isinstance(module.teacher, WanBackbone) else None)
    return [unit for role in roles if role is not None for unit in role.shard_units()] + \
        [unit for objective in module.objectives for unit in objective.shard_units()]


def engine_roles(module) -> list[EngineRole]:
    """The trainable roles as DeepSpeed engines (``oneforcing.engines.deepspeed``), in the order of
    ``configure_optimizers``: the generator, and the critic with the objectives' parameters that train beside it."""
    hp = module.hparams
    roles = [EngineRole("generator", module.generator, hp.generator_grad_clip, ("generator.",), hp.micro_batches)]
    if not module.critic_objectives:
        return roles
    own = [type(o).__name__ for o in module.objectives if o.optimizer_settings() is not None]
    if own:
        raise ValueError(f"{own} train their parameters with their own optimizer settings, which DeepSpeed's one "
                         "engine per role cannot step beside the critic's; unset them (e.g. the GAN's head_lr) "
                         "so that they train with the critic's optimizer, or use strategy ddp / fsdp2.")
    shared = [(i, o) for i, o in enumerate(module.objectives) if any(True for _ in o.parameters())]
    modules = [module.critic, *(o for _, o in shared)]
    prefixes = ("critic.", *(f"objectives.{i}." for i, _ in shared))
    role = module.critic if len(modules) == 1 else nn.ModuleList(modules)
    return roles + [EngineRole("critic", role, hp.critic_grad_clip, prefixes, hp.micro_batches)]


def frozen_roles(module) -> list[FrozenRole]:
    """The frozen roles with parameters, which DeepSpeed ZeRO-3 partitions beside the engines: a Wan teacher and the
    generator's EMA (kept fp32)."""
    roles = []
    if isinstance(module.teacher, WanBackbone):
        roles.append(FrozenRole("teacher.", module.teacher))
    if module.generator_ema is not None:
        roles.append(FrozenRole("generator_ema.", module.generator_ema, fp32=True))
    return roles


def freeze(*roles: nn.Module | None, fsdp2: bool) -> None:
    """Freeze the roles the coming step does not update, so that its backward computes no weight gradients for them.
    Not under FSDP2 (``fsdp2``: the module's roles are sharded): a unit's gathered parameters keep the requires_grad of their first use, so a role frozen then
    would never train again (and one trainable then gets gradients anyway); there the other role's gradients are
    computed and dropped (zeroed before its own step), and only its optimizer steps."""
    for role in roles:
        if role is not None and not fsdp2:
            role.requires_grad_(False)


def unfreeze(*roles: nn.Module | None, fsdp2: bool) -> None:
    """Undo ``freeze``; a LoRA role's base weights stay frozen."""
    for role in roles:
        if role is not None and not fsdp2:
            set_trainable(role, True)


def reshard_all(*roles: nn.Module | None) -> None:
    """FSDP2: start a step from sharded roles. A role root used without backward (a no-grad roll-out, the teacher,
    the EMA) keeps its parameters gathered; a later forward with gradients must gather them afresh for FSDP2 to
    reduce their gradients (reusing the gathered copy gave other gradients than DDP's). Elsewhere nothing."""
    for role in roles:
        if role is not None:
            reshard(role)
