"""Checkpoints written atomically: to a temporary file in the same directory, then renamed over the target.

A crash or a full disk while saving leaves the previous checkpoint intact and no half-written file.
Use it as a Trainer plugin: ``trainer.plugins: [oneforcing.callbacks.atomic_checkpoint.AtomicCheckpointIO]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are all-or-nothing (local file systems)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}.")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, target)  # atomic on POSIX within one file system
        finally:
            if tmp.exists():
                tmp.unlink()
