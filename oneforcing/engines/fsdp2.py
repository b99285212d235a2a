"""FSDP2 for every role: Lightning's ``ModelParallelStrategy`` with one data-parallel mesh dimension, and
``fully_shard`` applied per unit the module lists (each Wan block, each role's transformer, the discriminator
head), the frozen teacher and the generator's EMA included (docs/engines.md).

Mixed precision is FSDP2's: parameters are all-gathered in ``param_dtype`` for compute, gradients reduced in
``reduce_dtype``, the sharded master weights and the optimizer state stay fp32, and unit outputs are cast back
to fp32 so the objectives' maths stays fp32. Checkpoints are distributed (a folder with a shard per rank),
written atomically (a killed save leaves the previous checkpoint); ``oneforcing sample`` / ``evaluate`` and
``load_trained_module`` read such a folder back whole.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import DTensor


Dtype = Literal["float32", "bfloat16"]


class FSDP2Strategy(ModelParallelStrategy):
    """Fully shard every role of a module that lists its units (``shard_units()``) over all processes.

    Args:
        param_dtype: dtype the parameters are all-gathered in for forward and backward ("bfloat16": bf16 compute
            with fp32 master weights; the reference trainers' setting).
        reduce_dtype: dtype of the gradient reduce-scatter (fp32 keeps reductions exact).
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory between uses
            (``CPUOffloadPolicy``); the optimizer step then runs on the CPU.
        reshard_after_forward: free the gathered parameters after each unit's forward (ZeRO-3 behaviour; False
            keeps them until backward, ZeRO-2-like: more memory, one all-gather less).
        save_distributed_checkpoint: one shard per rank in a checkpoint folder (False: rank 0 gathers one file).
        process_group_backend, timeout: as for Lightning's strategies (gloo on CPU, nccl on GPU).
    """

    strategy_name = "fsdp2"

    def __init__(self, param_dtype: Dtype = "float32", reduce_dtype: Dtype = "float32", cpu_offload: bool = False,
                 reshard_after_forward: bool = True, save_distributed_checkpoint: bool = True,
                 process_group_backend: str | None = None, timeout: timedelta | None = default_pg_timeout) -> None:
        for name, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
            if value not in ("float32", "bfloat16"):
                raise ValueError(f"FSDP2Strategy {name}={value!r} is not supported; use 'float32' or 'bfloat16'.")
        # one data-parallel dimension over every process: ModelParallelStrategy's "auto" builds a tensor-parallel one
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.param_dtype, self.reduce_dtype = getattr(torch, param_dtype), getattr(torch, reduce_dtype)
        self.cpu_offload, self.reshard_after_forward = cpu_offload, reshard_after_forward

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register("fsdp2", cls, description="FSDP2: every role fully sharded, fp32")
        strategy_registry.register("fsdp2_bf16", cls, description="FSDP2, bf16 parameters, fp32 reductions",
                                   param_dtype="bfloat16")
        strategy_registry.register("fsdp2_offload", cls, description="FSDP2, shards offloaded to CPU memory",
                                   cpu_offload=True)

    def setup_environment(self) -> None:
        precision = self.precision_plugin.precision
        if self.param_dtype == torch.bfloat16 and precision not in ("bf16-mixed", "bf16-true"):
            raise ValueError(f"FSDP2 with param_dtype bfloat16 needs trainer.precision bf16-mixed (got {precision!r}): "
                             "diffusers' Wan embedders feed fp32 inputs to the bf16 gathered weights, which autocast "
                             "reconciles. Set --trainer.precision bf16-mixed or use strategy fsdp2 (fp32).")
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer) -> None:
        module = self.lightning_module
        if not hasattr(module, "shard_units"):
            raise TypeError(f"FSDP2Strategy shards the modules a LightningModule lists in shard_units(); "
                            f"{type(module).__name__} has none. Use strategy 'ddp' for it.")
        self.shard(module.shard_units())
        unsharded = [name for name, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
        if unsharded:
            raise RuntimeError(f"{len(unsharded)} trainable parameters are in no FSDP unit (e.g. {unsharded[:3]}); "
                               f"{type(module).__name__}.shard_units() must cover every trainable module.")
        super().setup(trainer)

    def shard(self, units: Iterable[nn.Module]) -> None:
        """``fully_shard`` each unit in order (inner units before the module that holds them)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        mixed = self.param_dtype != torch.float32 or self.reduce_dtype != torch.float32
        policy = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype,
                                      output_dtype=torch.float32 if mixed else None)
        offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if self.cpu_offload else OffloadPolicy()
        mesh, units = self.device_mesh["data_parallel"], list(units)
        inner = {id(m) for outer in units for m in outer.modules() if m is not outer}
        for unit in units:
            # a role's outermost unit keeps its parameters gathered until its backward (FSDP2's root default): a
            # role called several times before one backward (the roll-out's blocks) needs them in every call's
            # backward, and a reshard after a later call would free them under an earlier one
            reshard = self.reshard_after_forward if id(unit) in inner else False
            fully_shard(unit, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy, offload_policy=offload)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        """Write into ``<path>.partial`` and swap it in only when every rank has finished: a save killed midway
        leaves the previous checkpoint at ``path`` (or, killed during the swap, at ``<path>.previous``)."""
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(path.name + ".partial")
        if self.global_rank == 0 and partial.exists():
            remove_path(partial)  # the leftover of a killed save
        self.barrier("oneforcing_checkpoint_clean")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
        except (OSError, CheckpointException) as error:  # a full disk, on any rank (DCP reports it on every rank)
            self.barrier("oneforcing_checkpoint_failed")  # every rank is done with the partial folder
            if self.global_rank == 0:
                remove_path(partial)
            raise OSError(write_failure(path, _describe(error))) from error
        self.barrier("oneforcing_checkpoint_written")
        if self.global_rank == 0:
            swap_in(partial, path)
        self.barrier("oneforcing_checkpoint_swapped")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(checkpoint_path)
        previous = path.with_name(path.name + ".previous")
        if not path.exists() and previous.exists():  # killed between the two renames of a save
            checkpoint_path = previous
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)


def _describe(error: BaseException) -> str:
    if isinstance(error, CheckpointException):  # the ranks' own exceptions
        return "; ".join(f"rank {rank}: {failure[0] if isinstance(failure, tuple) else failure}"
                         for rank, failure in sorted(error.failures.items()))
    return str(error)


def swap_in(partial: Path, path: Path) -> None:
    """Put a fully written ``partial`` checkpoint at ``path``; the old one lives at ``<path>.previous`` only between
    the two renames (``load_checkpoint`` falls back to it)."""
    previous = path.with_name(path.name + ".previous")
    if path.exists():
        remove_path(previous)
        path.rename(previous)
    partial.rename(path)
    remove_path(previous)


def write_failure(path: Path, cause: str) -> str:
    """The message of a failed checkpoint write: what failed, what is kept, what to do."""
    kept = (f"the previous checkpoint {path} is intact" if path.exists()
            else f"the other checkpoints in {path.parent} are untouched")
    return (f"Writing the checkpoint {path} failed ({cause}); {kept}. Free space or point the checkpoint dirpath "
            "elsewhere, then resume from the last checkpoint.")


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


if "fsdp2" not in StrategyRegistry:  # `trainer.strategy: fsdp2` (or fsdp2_bf16, fsdp2_offload) in any config
    FSDP2Strategy.register_strategies(StrategyRegistry)
