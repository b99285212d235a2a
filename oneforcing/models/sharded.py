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
    both hold one (parameters ZeRO-3 keeps whole after their first use, below its persistence threshold). A whole
    copy ``target`` holds while ``source`` does not (DeepSpeed skipped ``source``'s step, which re-gathers its
    persistent parameters at the end) is released, to be gathered afresh from the updated partition; else the
    parameters."""
    targets, sources = [], []
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        if hasattr(t, "ds_id"):
            targets.append(t.ds_tensor), sources.append(s.ds_tensor)
            if t.data.numel() == t.ds_numel:
                if s.data.numel() == s.ds_numel:
                    targets.append(t.data), sources.append(s.data)
                else:
                    t.partition()
        else:
            targets.append(local_tensor(t)), sources.append(local_tensor(s))
    return targets, sources


def full_state_dict(module: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors on the CPU; a collective when the module is sharded. ZeRO-3
    partitions are gathered one submodule at a time (the device never holds the whole module); with ``rank0_only``
    only rank 0 keeps the copies (the other ranks return ``{}``)."""
    if is_partitioned(module):
        return _gathered_state_dict(module, rank0_only)
    if not is_fsdp2(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 broadcast_from_rank0=False))


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _gathered_state_dict(module: nn.Module, rank0_only: bool) -> dict[str, torch.Tensor]:
    import deepspeed

    keep = not rank0_only or _rank() == 0
    state = {}
    for prefix, sub in module.named_modules():
        own = list(sub.named_parameters(prefix=prefix, recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if keep:
                state.update({name: p.detach().cpu().clone() for name, p in own})
    if not keep:
        return {}
    state.update({name: b.detach().cpu().clone() for name, b in module.named_buffers()})
    return {key: state[key] for key in module.state_dict()}  # its order; persistent buffers only


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load whole tensors into ``module``, whose parameters may be ZeRO-3 partitions: one submodule at a time,
    gathered, written on every rank and partitioned from rank 0's values (a collective)."""
    if not is_partitioned(module):
        module.load_state_dict(state, strict=strict)
        return
    import deepspeed

    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if strict and (missing or unexpected):
        raise RuntimeError(f"The state does not fit {type(module).__name__}: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}.")
    with torch.no_grad():
        for prefix, sub in module.named_modules():
            own = [(name, p) for name, p in sub.named_parameters(prefix=prefix, recurse=False) if name in state]
            with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=0):
                for name, p in own:
                    p.data.copy_(state[name])
        for name, b in module.named_buffers():
            if name in state:
                b.copy_(state[name])


def reshard(module: nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 unit in ``module`` (a no-op for a plain module): a role root
    used without backward (an EMA target, a teacher) keeps them gathered, and in-place updates of the role
    (the EMA's lerp) must act on the shards."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()
