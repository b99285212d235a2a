"""Whole tensors and state dicts of modules whose parameters may be split across ranks: FSDP2 shards (DTensors)
or DeepSpeed ZeRO-3 partitions (parameters carrying ``ds_id``, empty outside a gather)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def is_fsdp2(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is an FSDP2 shard (a DTensor)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def is_partitioned(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DeepSpeed ZeRO-3 partition."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are split across ranks (FSDP2 or ZeRO-3): using them whole is a collective,
    so every rank must take part (sampling, exports)."""
    return is_fsdp2(module) or is_partitioned(module)


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Inside: ``module``'s ZeRO-3 parameters whole on every rank (a collective; read-only). A no-op otherwise."""
    if not is_partitioned(module):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it), else the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage: in-place updates reach the DTensor), else the tensor."""
    return value.to_local() if isinstance(value, DTensor) else value


def aligned_parts(target: nn.Module, source: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This rank's parts of two modules sharded alike, paired for in-place updates of ``target`` from ``source``
    without communication (an EMA's): FSDP2 shards; ZeRO-3 partitions (``ds_tensor``), and the whole tensors where
    ``target`` holds one (a parameter ZeRO-3 keeps whole after its first use, below its persistence threshold),
    so that both stay equal; else the parameters."""
    targets, sources = [], []
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        if hasattr(t, "ds_id"):
            targets.append(t.ds_tensor), sources.append(s.ds_tensor)
            if t.data.numel() == t.ds_numel:  # gathered: the source, persistent alike, is whole after its step
                targets.append(t.data), sources.append(s.data)
        else:
            targets.append(local_tensor(t)), sources.append(local_tensor(s))
    return targets, sources


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors on the CPU; a collective when the module is sharded."""
    if is_partitioned(module):
        with gathered(module):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    if not is_fsdp2(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 broadcast_from_rank0=False))


def reshard(module: nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 unit in ``module`` (a no-op for a plain module): a role root
    used without backward (an EMA target, a teacher) keeps them gathered, and in-place updates of the role
    (the EMA's lerp) must act on the shards."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()
