"""``oneforcing plan``: will a training config fit, per device, under an engine? Predicted without running it.

The config's module is built on the meta device (no weights read, no memory used), its roles counted, and one
iteration of each role's step traced there (``oneforcing.engines.memory``): per device, parameters, the frozen
teacher, the EMA, gradients, optimizer state, the engine's buffers and the activations' peak, with and without
activation checkpointing, and whether the total fits ``--gpu-memory``.

    oneforcing plan --config configs/wan2.1/one_forcing_framewise.yaml --engine fsdp2 --devices 8 --gpu-memory 80
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from oneforcing.engines.deepspeed import DeepSpeedStrategy
from oneforcing.engines.fsdp2 import FSDP2Strategy
from oneforcing.engines.memory import (DEEPSPEED_MAX_LIVE, DEEPSPEED_PERSISTENCE, DEEPSPEED_REDUCE_BUCKET, ENGINES, FP32,
                                       EngineSettings, Plan, RoleSizes, state_bytes, traced_peak)
from oneforcing.lightning_cli import OneForcingCLI
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.wan import WanBackbone
from oneforcing.toy.exact_teacher import ExactTeacher

GIB = 2 ** 30
ROWS = (("parameters", "parameters (generator, critic, heads)"), ("teacher", "frozen teacher"), ("ema", "EMA"),
        ("gradients", "gradients"), ("optimizer", "optimizer state"), ("buffers", "engine buffers"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oneforcing plan", description=__doc__.split("\n\n")[0],
                                epilog="Any other argument is passed to the config's parser like `oneforcing fit`'s "
                                       "(e.g. --data.init_args.batch_size 2).")
    p.add_argument("--config", required=True, help="a `oneforcing fit` config of a DistillationModule")
    p.add_argument("--engine", choices=[*ENGINES, "deepspeed"], default=None,
                   help="ddp, fsdp2, zero2 or zero3 (deepspeed = zero3), with fp32 parameters and DeepSpeed's default "
                        "buckets; default: the config's trainer.strategy with its settings (e.g. fsdp2_bf16, zero3_bf16)")
    p.add_argument("--devices", type=int, default=None,
                   help="ranks sharing the states; default: the config's trainer.devices × trainer.num_nodes")
    p.add_argument("--gpu-memory", type=float, default=None, help="memory per device in GiB, to say whether it fits")
    p.add_argument("--batch-size", type=int, default=None, help="samples per rank; default: the config's data batch")
    return p


def _config_objects(config: str, overrides: list[str]) -> tuple[Any, Any, dict]:
    """The config's module and data module, instantiated as ``oneforcing fit`` would, and its trainer settings."""
    class ModelOnlyCLI(OneForcingCLI):
        def instantiate_trainer(self, **kwargs):  # no accelerator or process group: only the model is needed
            return None

    with warnings.catch_warnings():  # LightningCLI warns that `plan`'s own arguments are not the ones it parses
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = ModelOnlyCLI(args=["--config", config, *overrides], run=False)
    trainer = cli.config_init.get("trainer", {})
    return cli.model, cli.datamodule, dict(trainer) if trainer else {}


def engine_from(trainer: dict, engine: str | None, devices: int | None) -> EngineSettings:
    """The engine settings of ``--engine`` or of the config's strategy (its bf16, DeepSpeed bucket settings)."""
    strategy = trainer.get("strategy", "ddp")
    count = devices if devices is not None else _devices(trainer)
    if engine is not None:
        return EngineSettings("zero3" if engine == "deepspeed" else engine, count)  # fp32 parameters
    if isinstance(strategy, FSDP2Strategy) or strategy in ("fsdp2", "fsdp2_bf16", "fsdp2_offload"):
        bf16 = (isinstance(strategy, FSDP2Strategy) and strategy.param_dtype == torch.bfloat16) or strategy == "fsdp2_bf16"
        return EngineSettings("fsdp2", count, param_bytes=2 if bf16 else FP32)
    if isinstance(strategy, DeepSpeedStrategy) or (isinstance(strategy, str) and strategy.startswith("zero")):
        if isinstance(strategy, str):
            stage, bf16, extra = int(strategy[4]), strategy.endswith("bf16"), {}
        else:
            stage, bf16, extra = strategy.stage, strategy.bf16, strategy.extra_config.get("zero_optimization", {})
        return EngineSettings(f"zero{max(stage, 2)}", count, param_bytes=2 if bf16 else FP32,
                              reduce_bucket_size=int(extra.get("reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET)),
                              persistence_threshold=int(extra.get("stage3_param_persistence_threshold",
                                                                  DEEPSPEED_PERSISTENCE)),
                              max_live_parameters=int(extra.get("stage3_max_live_parameters", DEEPSPEED_MAX_LIVE)),
                              overlap_comm=extra.get("overlap_comm"))
    return EngineSettings("ddp", count)


def _devices(trainer: dict) -> int:
    devices = trainer.get("devices", 1)
    devices = len(devices) if isinstance(devices, (list, tuple)) else (1 if devices in ("auto", -1) else int(devices))
    return devices * int(trainer.get("num_nodes", 1) or 1)


class _ZeroVelocity(nn.Module):
    """Stands in for a teacher that is not a Wan backbone (e.g. the exact teacher) in the trace: called without
    gradients, it keeps no activations; its memory is counted from the real one."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def teacher_bytes(teacher: nn.Module | None) -> int:
    """The frozen teacher's bytes per rank before sharding: fp32 weights, or an exact teacher's bank and tables."""
    if teacher is None:
        return 0
    if isinstance(teacher, ExactTeacher):
        return sum(t.numel() * t.element_size() for t in (teacher.bank, teacher.bank_sq_norms,
                                                          teacher.caption_embeddings, teacher.uncond_embedding))
    return FP32 * sum(p.numel() for p in teacher.parameters())


AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # trainer.precision -> autocast dtype


def fake_batch(module: DistillationModule, size: int) -> dict:
    """A batch of meta tensors with every member the module's objectives read."""
    from oneforcing.objectives.trajectory import TrajectoryDistillation

    frames, latent = module.hparams.num_frames, module.latent_shape()
    batch = {"caption": ["plan"] * size, "latents": torch.empty(size, frames, *latent, device="meta")}
    if any(isinstance(o, TrajectoryDistillation) for o in module.objectives):
        steps = len(module.step_sigmas)
        batch.update(trajectory=torch.empty(size, steps, frames, *latent, device="meta"),
                     trajectory_sigmas=torch.empty(size, steps, device="meta"),
                     ode_output=torch.empty(size, frames, *latent, device="meta"))
    return batch


def activation_peaks(module: DistillationModule, batch_size: int, autocast: torch.dtype | None = None) -> dict[str, int]:
    """Each role's traced activation peak (bytes) on one micro-batch of ``batch_size`` samples, under autocast's
    casts to ``autocast`` when given."""
    batch = fake_batch(module, batch_size)
    encoder = module.text_encoder
    context = torch.empty(batch_size, encoder.context_length, module.backbone_config.text_dim, device="meta")
    uncond = torch.empty_like(context) if "teacher" in module.roles else None
    peaks = {}
    for side, other in (("generator", [module.critic, *module.objectives]), ("critic", [module.generator])):
        if side == "generator" and not module.generator_objectives or side == "critic" and not module.critic_objectives:
            continue
        frozen = [m for m in other if m is not None]
        trainable = {id(p): p.requires_grad for m in frozen for p in m.parameters()}
        for m in frozen:
            m.requires_grad_(False)

        def step() -> None:
            loss, _ = module.step_loss(side, batch, context, uncond)
            loss.backward()

        try:
            peaks[side] = traced_peak(step, list(module.parameters()), autocast)
        finally:
            for m in frozen:
                for p in m.parameters():
                    p.requires_grad_(trainable[id(p)])
    return peaks


def plan_module(module: DistillationModule, engine: EngineSettings, batch_size: int,
                gpu_memory: float | None = None, precision: str = "32-true") -> Plan:
    """The module's per-rank plan under ``engine`` at ``batch_size`` samples per rank (its micro-batches traced,
    under autocast's casting rules for the mixed precisions)."""
    if not isinstance(module, DistillationModule):
        raise TypeError(f"oneforcing plan predicts a DistillationModule's training; the config builds a "
                        f"{type(module).__name__}.")
    hp = module.hparams
    if batch_size % hp.micro_batches:
        raise ValueError(f"batch size {batch_size} per rank does not split into micro_batches={hp.micro_batches}.")
    checkpointed = list(hp.activation_checkpointing)
    hp.activation_checkpointing = []  # traced both ways below
    given = teacher_bytes(module.teacher) if module.teacher is not None else None  # before it moves to meta
    with torch.device("meta"):
        module.build_roles(load_weights=False)
    teacher = teacher_bytes(module.teacher) if given is None else given
    if module.teacher is not None and not isinstance(module.teacher, WanBackbone):
        module.teacher = _ZeroVelocity()
    module.to("meta")  # the roles, heads and the module's device (the roll-out's noise follows it)
    module.iteration = torch.zeros((), dtype=torch.long)  # read as a number by the step: kept on the CPU
    hp.activation_checkpointing = checkpointed
    heads = [o for o in module.objectives if any(True for _ in o.parameters())]
    roles = [RoleSizes.of("generator", [module.generator], module.generator.shard_units(), engine.persistence_threshold)]
    if module.critic_objectives:
        units = module.critic.shard_units() + [u for o in heads for u in o.shard_units()]
        roles.append(RoleSizes.of("critic", [module.critic, *heads], units, engine.persistence_threshold))
    ema = sum(p.numel() for p in module.generator_ema.parameters()) if module.generator_ema is not None else 0
    wan_teacher = (RoleSizes.of("teacher", [module.teacher], persistence_threshold=engine.persistence_threshold)
                   if isinstance(module.teacher, WanBackbone) else None)
    states = state_bytes(roles, teacher, ema, engine, teacher=wan_teacher,
                         ema_persistent=roles[0].persistent if module.generator_ema is not None else 0)
    micro = batch_size // hp.micro_batches
    autocast = AUTOCAST.get(str(precision))
    plain = activation_peaks(module, micro, autocast)
    for role in (module.generator, module.critic):
        if role is not None:
            role.enable_activation_checkpointing()
    with_checkpointing = activation_peaks(module, micro, autocast)
    on = bool(checkpointed)
    notes = [f"{engine.kind} on {engine.devices} device(s), {batch_size} sample(s) per device"
             + (f" in {hp.micro_batches} micro-batches" if hp.micro_batches > 1 else ""),
             f"activation checkpointing {'on for ' + ', '.join(checkpointed) if on else 'off'} in the config"
             + ("; with cache_gradient the roll-out's KV-cached calls are not recomputed" if hp.cache_gradient else "")]
    notes.append(f"activations traced under {precision}: " + (
        f"autocast's casts to {str(autocast).removeprefix('torch.')} applied" if autocast is not None else
        "in float32"))
    return Plan(states, with_checkpointing if on else plain, plain if on else with_checkpointing, on,
                None if gpu_memory is None else int(gpu_memory * GIB), notes)


def render(plan: Plan, console: Console) -> None:
    table = Table(title="Memory per device (predicted)")
    table.add_column("")
    table.add_column("GiB", justify="right")
    for key, name in ROWS:
        table.add_row(name, f"{plan.states[key] / GIB:.3f}")
    other = "without" if plan.checkpointing else "with"
    for side, peak in plan.activations.items():
        table.add_row(f"activations, {side} step (peak)", f"{peak / GIB:.3f}")
        table.add_row(f"  ({other} activation checkpointing)", f"{plan.activations_other[side] / GIB:.3f}")
    table.add_row("total (states + the larger step's activations)", f"{plan.total / GIB:.3f}", style="bold")
    if plan.device_bytes is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        table.add_row("device", f"{plan.device_bytes / GIB:.3f}")
        table.add_row(verdict, f"{(plan.device_bytes - plan.total) / GIB:+.3f}",
                      style="green" if plan.fits else "red")
    console.print(table)
    for note in plan.notes:
        console.print(f"  {note}")


def plan_command(argv: list[str]) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    if args.devices is not None and args.devices < 1:
        raise SystemExit(f"--devices {args.devices} must be >= 1.")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise SystemExit(f"--gpu-memory {args.gpu_memory} must be > 0 (GiB per device).")
    module, datamodule, trainer = _config_objects(args.config, overrides)
    batch_size = args.batch_size or getattr(datamodule, "batch_size", None)
    if not batch_size or batch_size < 1:
        raise SystemExit(f"No batch size per device in {args.config} (data.init_args.batch_size); pass --batch-size.")
    try:
        engine = engine_from(trainer, args.engine, args.devices)
        plan = plan_module(module, engine, batch_size, args.gpu_memory, str(trainer.get("precision", "32-true")))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"oneforcing plan: {error}") from error
    render(plan, Console())
