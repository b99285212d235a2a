"""The generator's exponential moving average, updated in place on whatever each rank holds of it."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from oneforcing.models.sharded import aligned_parts, gathered, is_partitioned, reshard


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, initialised: torch.Tensor, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · live; the first call copies ``live`` and sets the ``initialised`` flag (a bool
    buffer, checkpointed with the module). FSDP2 shards and ZeRO-3 partitions both roles alike, so the update is
    local to each rank's part (no communication); a replicated EMA of a ZeRO-3 generator gathers the generator."""
    reshard(ema), reshard(live)  # FSDP2: update the shards, not gathered copies
    local = is_partitioned(ema) or not is_partitioned(live)
    with contextlib.nullcontext() if local else gathered(live):
        ema_parts, live_parts = (aligned_parts(ema, live) if local
                                 else (list(ema.parameters()), list(live.parameters())))
        live_parts = [t.to(e.dtype) for e, t in zip(ema_parts, live_parts, strict=True)]  # bf16 generator, fp32 EMA
        if not bool(initialised):
            torch._foreach_copy_(ema_parts, live_parts)
            initialised.fill_(True)
        else:
            torch._foreach_lerp_(ema_parts, live_parts, 1.0 - decay)
