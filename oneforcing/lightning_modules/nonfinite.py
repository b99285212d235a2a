"""Non-finite losses skip their step, are counted, and stop the run with a clear message if they persist."""

from __future__ import annotations

import warnings

import lightning as L
import torch


class NonFiniteGuard:
    """Decides, identically on every rank, whether a loss may be back-propagated.

    Args:
        patience: consecutive non-finite losses tolerated before the run stops.
    """

    def __init__(self, patience: int = 20) -> None:
        if patience < 0:
            raise ValueError(f"nonfinite_patience={patience} must be >= 0.")
        self.patience = patience
        self.streak = 0
        self.skipped = 0

    def is_finite(self, module: L.LightningModule, loss: torch.Tensor, what: str) -> bool:
        finite = bool(torch.isfinite(loss.detach()).all())
        if module._trainer is not None:  # every rank skips if any rank saw a non-finite loss
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.streak = 0
            return True
        self.streak += 1
        self.skipped += 1
        if self.streak > self.patience:
            raise RuntimeError(
                f"The {what} loss was non-finite for {self.streak} consecutive steps ({self.skipped} skipped in all); "
                "stopping. Lower the learning rate or the gradient-clip threshold, check the data and the teacher "
                "weights, or resume from the last checkpoint before the divergence."
            )
        warnings.warn(f"Non-finite {what} loss at step {module.global_step}: the step is skipped "
                      f"({self.skipped} skipped so far, {self.streak} in a row).", stacklevel=2)
        return False
