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
from safetensors.torch import load_file

from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.models.wan import safetensors_metadata

MODULE_CLASSES: dict[str, type[L.LightningModule]] = {"TeacherModule": TeacherModule,
                                                      "DistillationModule": DistillationModule}
# weights a sampler needs; teacher and critic weights of a distillation checkpoint are not rebuilt
INFERENCE_PREFIXES = {"DistillationModule": ("generator.", "generator_ema.", "iteration", "ema_initialised")}
INIT_WEIGHT_KEYS = ("init_weights", "teacher_weights", "generator_weights", "critic_weights")


def load_trained_module(path: str | Path, expected: tuple[str, ...] | None = None) -> L.LightningModule:
    """Rebuild a module from a checkpoint or exported weights; ``expected`` restricts the accepted classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
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
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        recorded = str(hparams.get("_class_path", "")).rsplit(".", 1)[-1]  # LightningCLI records the class
        name = checkpoint.get("oneforcing_module") or recorded or "TeacherModule"
    if name not in MODULE_CLASSES or (expected and name not in expected):
        raise ValueError(f"{path} holds a {name}; this command needs one of {list(expected or MODULE_CLASSES)}.")
    # LightningCLI records how it built the module ("_class_path", "_instantiator"); they are not arguments
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    hparams = {k: (None if k in INIT_WEIGHT_KEYS else v) for k, v in hparams.items()}  # weights come from `state`
    if name in INFERENCE_PREFIXES:
        hparams["objectives"] = []  # sampling needs the generator only
        state = {k: v for k, v in state.items() if k.startswith(INFERENCE_PREFIXES[name])}
    module = MODULE_CLASSES[name](**hparams)
    module.configure_model()
    module.load_state_dict(state, strict=True)
    return module.eval()


def weights_choice(module: L.LightningModule, ema: bool | None) -> str:
    """Which generator weights a sampler of ``module`` uses: 'ema', 'raw', or 'teacher' (a bidirectional teacher).

    ``ema`` None: the EMA when the module has one, else the raw generator; True: the EMA, an error without
    one; False: the raw generator. (EMA against raw moves the One-Forcing authors' VBench total by up to 2.7
    points either way, so every report says which it used.)
    """
    if not hasattr(module, "generator_weights"):
        return "teacher"
    if ema and not module.has_ema:
        raise ValueError("This checkpoint holds no EMA of its generator (ema_start null or not reached); "
                         "use --ema false for the raw generator.")
    return "ema" if (module.has_ema if ema is None else ema) else "raw"


def causal_generator_from(module: L.LightningModule, block_size: int = 1, first_block_size: int | None = None,
                          window_frames: int | None = None, sink_frames: int = 0, use_ema: bool = True):
    """The causal generator held by ``module`` with the requested block layout.

    A bidirectional teacher initialises a causal student of the same shapes (design §5, stage 3 starts here);
    a distilled module gives its generator (EMA weights when ``use_ema`` and available).
    """
    from oneforcing.models.causal_wan import CausalWanBackbone

    if hasattr(module, "generator_weights"):
        config, state = module.generator_config, module.generator_weights(use_ema=use_ema)
    elif isinstance(module, TeacherModule):
        config, state = module.backbone_config, module.model.state_dict()
    else:
        raise ValueError(f"A {type(module).__name__} holds no causal generator and no teacher to initialise one from.")
    generator = CausalWanBackbone(config, block_size=block_size, first_block_size=first_block_size,
                                  window_frames=window_frames, sink_frames=sink_frames)
    generator.load_state_dict(state, strict=True)
    return generator.eval()
