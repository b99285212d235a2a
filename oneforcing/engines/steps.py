"""How one role's step runs under the trainer's strategy: the one interface ``DistillationModule`` calls for what
differs between engines (gradient synchronisation of accumulated micro-batches, clipping, the optimizer step).

``RoleSteps`` serves a single device, Lightning's DDP and our FSDP2 (whose parts each reduce-scatter their
gradients in backward). A strategy with its own way (DeepSpeed's engines reduce, clip and step themselves) provides
``role_steps()``; ``role_steps_of`` picks it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from oneforcing.models.sharded import full_tensor


class RoleSteps:
    """Role steps under a single device, DDP or FSDP2."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def _ddp(self) -> nn.parallel.DistributedDataParallel | None:
        """The DDP wrapper when plain DDP trains the module (FSDP2's parts reduce-scatter on their own)."""
        model = self.strategy.model
        return model if isinstance(model, nn.parallel.DistributedDataParallel) else None

    def no_gradient_sync(self) -> contextlib.AbstractContextManager:
        """Under DDP, a micro-batch's backward before the step's last one accumulates locally (one all-reduce per
        role step instead of one per micro-batch); the last backward reduces the sum."""
        ddp = self._ddp()
        # Lightning prepares DDP's reducer before a manual backward only while ``require_backward_grad_sync``, which
        # no_sync clears: the reducer's hooks then leave the gradients local
        return contextlib.nullcontext() if ddp is None else ddp.no_sync()

    def sync_accumulated_gradients(self, module) -> None:
        """Every backward of the step ran without sync (its last micro-batch was skipped as non-finite, on every
        rank): a synced backward of a zero loss over the trainable parameters lets DDP's reducer average the
        accumulated gradients, as the last backward would have, and close its bookkeeping of the step (the
        parameters the unsynced backwards marked as used). Averaging by hand would leave that bookkeeping open for
        the next synced backward, which then fails on the other role's frozen parameters."""
        if self._ddp() is None:
            return
        trainable = [p for p in module.parameters() if p.requires_grad]
        module.manual_backward(sum((p * 0).sum() for p in trainable))

    def clip_and_step(self, optimizer, max_norm: float, counted: bool, clip: bool) -> torch.Tensor | None:
        """Clip the gradients of ``optimizer``'s parameters to ``max_norm`` and step it; with ``clip``, their global
        norm before clipping. ``counted``: the step goes through Lightning (the iteration's one counted step)."""
        norm = None
        if clip:
            params = [p for group in optimizer.optimizer.param_groups for p in group["params"]]
            norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step() if counted else optimizer.optimizer.step()
        return norm


def role_steps_of(strategy) -> RoleSteps:
    """The strategy's own role steps when it has them (``role_steps()``), else those of a single device, DDP, FSDP2."""
    own = getattr(type(strategy), "role_steps", None)
    return own(strategy) if own is not None else RoleSteps(strategy)
