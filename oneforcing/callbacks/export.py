"""Writes the trained weights as safetensors (atomic), with the module class and hyper-parameters as metadata."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from safetensors.torch import save

from oneforcing.video_io import atomic_write_bytes


def export_weights(module: L.LightningModule, path: str | Path) -> Path:
    """Save ``module``'s state dict to ``path`` (safetensors) with metadata to rebuild it."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    meta = {"module": type(module).__name__, "hparams": json.dumps(dict(module.hparams))}
    atomic_write_bytes(path, save(state, metadata=meta))
    return Path(path)


class ExportWeights(L.Callback):
    """At the end of fit, export weights to ``path`` (default ``<log_dir>/weights.safetensors``).

    List it *after* ``EMAWeightAveraging`` in the callbacks so that the exported weights are the EMA ones.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective (broadcast) under DDP: every rank must ask, not only rank 0
        if trainer.is_global_zero:
            path = Path(self.path or Path(log_dir or ".") / "weights.safetensors")
            export_weights(pl_module, path)
            print(f"[oneforcing] weights written to {path}")
