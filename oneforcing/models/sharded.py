"""Whole tensors and state dicts of modules that may be sharded by FSDP2 (their parameters are DTensors)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is an FSDP2 shard (a DTensor)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it), else the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage: in-place updates reach the DTensor), else the tensor."""
    return value.to_local() if isinstance(value, DTensor) else value


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors on the CPU; a collective when the module is sharded."""
    if not is_sharded(module):
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
