"""Loading trained modules for sampling and evaluation without unpickling arbitrary code.

Two formats: Lightning ``.ckpt`` files (read with ``torch.load(weights_only=True)``; hyper-parameters are
plain types) and exported ``.safetensors`` files whose metadata name the module class and its
hyper-parameters (written by the ``ExportWeights`` callback).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from oneforcing.lightning_modules.teacher import TeacherModule

MODULE_CLASSES: dict[str, type[L.LightningModule]] = {"TeacherModule": TeacherModule}


def register_module_class(cls: type[L.LightningModule]) -> type[L.LightningModule]:
    MODULE_CLASSES[cls.__name__] = cls
    return cls


def load_trained_module(path: str | Path, expected: tuple[str, ...] | None = None) -> L.LightningModule:
    """Rebuild a module from a checkpoint or exported weights; ``expected`` restricts the accepted classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "module" not in meta:
            raise ValueError(
                f"{path} has no 'module' metadata: it is a bare weight file, not an export of a oneforcing module. "
                "Pass a Lightning .ckpt or a file written by the ExportWeights callback."
            )
        name, hparams, state = meta["module"], json.loads(meta["hparams"]), load_file(path)
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
            raise ValueError(f"{path} is not a Lightning checkpoint of a oneforcing module (no state_dict/hyper_parameters).")
        name = checkpoint.get("oneforcing_module", "TeacherModule")
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
    if name not in MODULE_CLASSES or (expected and name not in expected):
        raise ValueError(f"{path} holds a {name}; this command needs one of {list(expected or MODULE_CLASSES)}.")
    module = MODULE_CLASSES[name](**hparams)
    module.configure_model()
    module.load_state_dict(state, strict=True)
    return module.eval()
