"""Loading trained modules for sampling and evaluation without unpickling arbitrary code.

Lightning ``.ckpt`` files (read with ``torch.load(weights_only=True)``; hyper-parameters are plain types),
the sharded checkpoint folders of the ``fsdp2`` and ``zero2`` / ``zero3`` strategies (gathered whole on one process) and exported ``.safetensors`` files whose metadata name the module class and its
hyper-parameters (written by the ``ExportWeights`` callback). A third, ``load_released_module``: a ``.pt``
released by the reference trainers (Self-Forcing, Causal Forcing, One-Forcing; Wan's original naming), whose
architecture and sampling schedule come from one of our recipe configs (``--released-config``).
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import lightning as L
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from oneforcing.engines.deepspeed import is_deepspeed_checkpoint, read_deepspeed_checkpoint
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.models.released_checkpoints import is_released_checkpoint, load_released, released_state
from oneforcing.models.wan import safetensors_metadata
from oneforcing.models.wan_components import wan_components
from oneforcing.models.wan_folder import WanModelFolder
from oneforcing.sampling.schedules import STUDENT_SHIFT, student_sigmas
from oneforcing.sampling.streaming import StreamingSampler

MODULE_CLASSES: dict[str, type[L.LightningModule]] = {"TeacherModule": TeacherModule,
                                                      "DistillationModule": DistillationModule}
# weights a sampler needs; teacher and critic weights of a distillation checkpoint are not rebuilt
INFERENCE_PREFIXES = {"DistillationModule": ("generator.", "generator_ema.", "iteration", "ema_initialised")}
INIT_WEIGHT_KEYS = ("init_weights", "teacher_weights", "generator_weights", "critic_weights")


def load_trained_module(path: str | Path, expected: tuple[str, ...] | None = None) -> L.LightningModule:
    """Rebuild a module from a checkpoint or exported weights; ``expected`` restricts the accepted classes."""
    return build_trained_module(*read_trained(path), path=path, expected=expected)


def read_trained(path: str | Path) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(module class name, hyper-parameters, whole state dict) of a .ckpt, a sharded checkpoint folder or an export."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        return _read_trained(path)
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, OSError) as error:
        if isinstance(error, RuntimeError) and not _looks_corrupt(error):
            raise
        raise ValueError(f"{path} cannot be read: {error}. The file is corrupt or truncated (an interrupted copy or "
                         "write?); use another checkpoint, e.g. the run's previous one or its weights.safetensors.") from error


def _looks_corrupt(error: RuntimeError) -> bool:
    """torch.load's own words for a damaged zip archive."""
    text = str(error)
    return any(k in text for k in ("PytorchStreamReader", "zip archive", "central directory", "invalid header"))


def _read_trained(path: Path) -> tuple[str, dict, dict[str, torch.Tensor]]:
    if path.is_dir():
        checkpoint = read_sharded_checkpoint(path)
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        name = checkpoint.get("oneforcing_module") or "TeacherModule"
    elif path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
        if "module" not in meta:
            raise ValueError(
                f"{path} has no 'module' metadata: it is a bare weight file, not an export of a oneforcing module. "
                "Pass a Lightning .ckpt or a file written by the ExportWeights callback."
            )
        name, hparams, state = meta["module"], json.loads(meta["hparams"]), load_file(path)
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if is_released_checkpoint(checkpoint):
            raise ValueError(f"{path} is a checkpoint released by a reference trainer ({sorted(checkpoint)}): it records "
                             "no architecture or schedule. `oneforcing sample` and `oneforcing vbench` run it with --released-config "
                             "and the matching recipe, e.g. configs/wan2.1/one_forcing_framewise.yaml (and --model-dir "
                             "for the Wan2.1 folder); `oneforcing evaluate` measures toy-world models only.")
        if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
            raise ValueError(f"{path} is not a Lightning checkpoint of a oneforcing module (no state_dict/hyper_parameters).")
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        recorded = str(hparams.get("_class_path", "")).rsplit(".", 1)[-1]  # LightningCLI records the class
        name = checkpoint.get("oneforcing_module") or recorded or "TeacherModule"
    return name, hparams, state


def build_trained_module(name: str, hparams: dict, state: dict[str, torch.Tensor], path: str | Path = "",
                         expected: tuple[str, ...] | None = None) -> L.LightningModule:
    """The module ``read_trained`` describes, in eval mode; a distillation module keeps its generator (and EMA)."""
    if name not in MODULE_CLASSES or (expected and name not in expected):
        raise ValueError(f"{path} holds a {name}; this command needs one of {list(expected or MODULE_CLASSES)}.")
    # LightningCLI records how it built the module ("_class_path", "_instantiator"); they are not arguments
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    hparams = {k: (None if k in INIT_WEIGHT_KEYS else v) for k, v in hparams.items()}  # weights come from `state`
    if hparams.get("model_dir"):  # the folder gives the codec and text encoder; the weights come from `state`
        hparams["codec"], hparams["text_encoder"] = wan_components(hparams.pop("model_dir"))
    if name in INFERENCE_PREFIXES:
        hparams.update(objectives=[], activation_checkpointing=[])  # sampling needs the generator only
        state = {k: v for k, v in state.items() if k.startswith(INFERENCE_PREFIXES[name])}
    module = MODULE_CLASSES[name](**hparams)
    module.configure_model()
    module.load_state_dict(state, strict=True)
    return module.eval()


def read_sharded_checkpoint(path: str | Path) -> dict:
    """A distributed checkpoint folder (FSDP2: a ``.distcp`` shard per rank and ``meta.pt``; DeepSpeed: a folder
    per engine and ``trainer.pt``) as one whole Lightning checkpoint dict, read on one process."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    path = Path(path)
    if is_deepspeed_checkpoint(path):
        checkpoint = read_deepspeed_checkpoint(path)
    elif (path / "meta.pt").is_file() and any(path.glob("*.distcp")):
        checkpoint = _load_distributed_checkpoint(path)
    else:
        raise ValueError(f"{path} is a folder but not a sharded checkpoint (no meta.pt and *.distcp shards written by "
                         "the fsdp2 strategy, no trainer.pt and engine folders written by the zero2 / zero3 "
                         "strategies). Pass a .ckpt file, an exported .safetensors or a checkpoint folder.")
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path} is not a sharded checkpoint of a oneforcing module (no state_dict/hyper_parameters).")
    return checkpoint


def load_for_sampling(checkpoint: str | Path, released_config: str | None = None,
                      model_dir: str | None = None) -> L.LightningModule:
    """What ``sample`` / ``vbench`` run: our checkpoint or export, or (with ``released_config``) a released one."""
    if released_config:
        return load_released_module(checkpoint, released_config, model_dir)
    if model_dir:
        raise ValueError("--model-dir goes with --released-config (our checkpoints record their model_dir).")
    return load_trained_module(checkpoint)


def module_from_config(config: str | Path, overrides: dict | None = None, objects: dict | None = None) -> DistillationModule:
    """A DistillationModule built from the ``model`` section of a recipe YAML: ``overrides`` replace config values
    before parsing, ``objects`` (e.g. a ready codec) are passed to the constructor as they are."""
    import yaml
    from jsonargparse import ArgumentParser

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"Config {path} does not exist (e.g. configs/wan2.1/one_forcing_framewise.yaml).")
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    if str(model.get("class_path", "")).rsplit(".", 1)[-1] != "DistillationModule":
        raise ValueError(f"{path} does not configure a DistillationModule (model.class_path); pass a distillation "
                         "recipe such as configs/wan2.1/one_forcing_framewise.yaml.")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DistillationModule, "model", instantiate=False)
    parsed = parser.parse_object({"model": {**(model.get("init_args") or {}), **(overrides or {})}})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return DistillationModule(**{**vars(instantiate(parsed).model), **(objects or {})})


def load_released_module(path: str | Path, config: str | Path, model_dir: str | None = None) -> DistillationModule:
    """A released reference checkpoint's generator (and EMA) in a module built from ``config`` for sampling.

    ``config``: the recipe the checkpoint corresponds to (backbone, block layout, denoising steps, frames);
    ``model_dir``: the Wan2.1 folder for the codec and text encoder (default: the config's ``model_dir``).
    """
    checkpoint = load_released(path)
    folder = model_dir or _config_model_dir(config)
    objects = {}
    if folder:  # the folder gives the codec and text encoder; the generator's weights come from the checkpoint
        WanModelFolder(folder).check()
        objects["codec"], objects["text_encoder"] = wan_components(folder)
    module = module_from_config(config, dict(objectives=[], teacher_weights=None, generator_weights=None,
                                             critic_weights=None, model_dir=None, activation_checkpointing=[]),
                                objects)
    if folder:
        WanModelFolder(folder).check(backbone=module.backbone_config, latent_channels=module.codec.latent_channels,
                                     spatial_factor=module.codec.spatial_factor,
                                     text_dim=module.backbone_config.text_dim)
    module.configure_model()
    roles = [r for r in ("generator", "generator_ema") if isinstance(checkpoint.get(r), dict)]
    if not roles:
        raise ValueError(f"{path} holds no generator weights (generator / generator_ema); it holds "
                         f"{sorted(checkpoint)}. A critic alone cannot be sampled.")
    states = {role: released_state(checkpoint, role, str(path))[1] for role in roles}
    module.generator.load_state(states.get("generator", states.get("generator_ema")), path)
    if "generator_ema" in states:
        if module.generator_ema is None:
            module.generator_ema = copy.deepcopy(module.generator).requires_grad_(False)
        module.generator_ema.load_state(states["generator_ema"], path)
        module.ema_initialised.fill_(True)
    else:
        module.generator_ema = None
    module.released_roles = roles
    return module.eval()


def _config_model_dir(config: str | Path) -> str | None:
    import yaml

    model = (yaml.safe_load(Path(config).read_text()) or {}).get("model") or {}
    return (model.get("init_args") or {}).get("model_dir")


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

    A bidirectional teacher initialises a causal student of the same shapes (stage 3 of docs/algorithms.md §16
    starts here); a distilled module gives its generator (EMA weights when ``use_ema`` and available).
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


def streaming_sampler_from(module: L.LightningModule, block_size: int | None = None,
                           first_block_size: int | None = None, steps: int | None = None,
                           first_block_steps: int | None = None, shift: float | None = None,
                           window_frames: int | None = None, sink_frames: int = 0,
                           ema: bool | None = None) -> tuple[StreamingSampler, str]:
    """The streaming sampler of ``module``'s causal student and which weights it uses ('ema', 'raw', 'teacher').

    Every argument left None is the student's own (its block layout, step schedule, first-block schedule);
    ``steps`` picks a warped schedule of that many steps at ``shift`` (default ``STUDENT_SHIFT``).
    """
    trained = dict(module.hparams)
    weights = weights_choice(module, ema)
    generator = causal_generator_from(module, block_size or trained.get("block_size", 1),
                                      first_block_size or trained.get("first_block_size"), window_frames,
                                      sink_frames, weights == "ema")
    shift = STUDENT_SHIFT if shift is None else shift
    sigmas = student_sigmas(steps, shift) if steps else getattr(module, "step_sigmas", [1.0])
    first = (student_sigmas(first_block_steps, shift) if first_block_steps
             else getattr(module, "first_block_sigmas", None))
    solver = module.solver if isinstance(module, DistillationModule) else "renoise"  # released: few-step students
    return StreamingSampler(generator, sigmas, first_block_sigmas=first, solver=solver), weights
