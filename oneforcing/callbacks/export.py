"""Writes the trained weights as safetensors (atomic), with the module class and hyper-parameters as metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

import lightning as L
import torch
from safetensors.torch import save

from oneforcing.models.lora import LORA_MARKER, has_lora, merged_state_dict
from oneforcing.models.sharded import full_state_dict, is_sharded
from oneforcing.video_io import atomic_write_bytes

LORA_HPARAMS = ("generator_lora", "critic_lora")

ExportDtype = Literal["float32", "float16", "bfloat16"]


def export_weights(module: L.LightningModule, path: str | Path, dtype: ExportDtype | None = None,
                   state: dict[str, torch.Tensor] | None = None, hparams: dict | None = None) -> Path:
    """Save ``module``'s state dict to ``path`` (safetensors) with metadata to rebuild it.

    ``dtype`` casts floating-point tensors (e.g. ``"float16"`` halves a shipped file); loading casts them back
    to the module's own dtype. Integer buffers keep theirs. LoRA adapters are merged into plain weights (and the
    recorded ``*_lora`` settings cleared), so the file loads into a module or backbone without peft. ``state``: the
    module's whole state when it is sharded (``full_state_dict``, gathered on every rank) or read from a checkpoint;
    ``hparams``: the metadata's hyper-parameters (default: the module's).
    """
    target = None if dtype is None else _torch_dtype(dtype)
    hparams = dict(module.hparams if hparams is None else hparams)
    source = module.state_dict() if state is None else state
    if has_lora(module):
        source = merged_state_dict(module, source)
        hparams.update({k: None for k in LORA_HPARAMS if k in hparams})
    adapters = [k for k in source if LORA_MARKER in k]
    if adapters:
        raise ValueError(f"{len(adapters)} LoRA adapter tensors (e.g. {adapters[0]}) have no adapted layer in "
                         f"{type(module).__name__} to merge into, so {path} would not load without peft.")
    state = {}
    for key, value in source.items():
        value = value.detach()
        if target is not None and value.is_floating_point():
            value = value.to(target)
        state[key] = value.contiguous().cpu()
    meta = {"module": type(module).__name__, "hparams": json.dumps(hparams)}
    atomic_write_bytes(path, save(state, metadata=meta))
    return Path(path)


def _torch_dtype(name: str) -> torch.dtype:
    allowed = get_args(ExportDtype)
    if name not in allowed:
        raise ValueError(f"Export dtype {name!r} is not supported; use one of {allowed} (or null to keep the module's).")
    return getattr(torch, name)


class ExportWeights(L.Callback):
    """At the end of fit, export weights to ``path`` (default ``<log_dir>/weights.safetensors``).

    List it *after* ``EMAWeightAveraging`` in the callbacks so that the exported weights are the EMA ones.
    ``dtype`` casts the floating-point weights on export (``float16`` for the shipped toy teacher).
    """

    def __init__(self, path: str | None = None, dtype: ExportDtype | None = None) -> None:
        if dtype is not None:
            _torch_dtype(dtype)  # fail at config time, not after hours of training
        self.path = path
        self.dtype = dtype

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective (broadcast) under DDP: every rank must ask, not only rank 0
        # sharded: every rank takes part in the gather, rank 0 keeps the copy
        state = full_state_dict(pl_module, rank0_only=True) if is_sharded(pl_module) else None
        if trainer.is_global_zero:
            path = Path(self.path or Path(log_dir or ".") / "weights.safetensors")
            export_weights(pl_module, path, dtype=self.dtype, state=state)
            print(f"[oneforcing] weights written to {path}")
