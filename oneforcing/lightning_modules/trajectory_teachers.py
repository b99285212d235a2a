"""The teachers whose ODE trajectories ``oneforcing data trajectories`` samples: a trained checkpoint (a bidirectional
``TeacherModule``, or a ``DistillationModule``'s causal generator in teacher forcing), a Wan2.1 diffusers folder,
or the toy world's exact teacher. Each loader returns (module, teacher kind, velocity for a ground-truth batch,
the index fields that record the teacher)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from oneforcing.lightning_modules.checkpoints import causal_generator_from, load_trained_module
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.models.wan import WanConfig
from oneforcing.models.wan_components import wan_components
from oneforcing.models.wan_folder import BACKBONE_FIELDS, WanModelFolder
from oneforcing.sampling.euler import teacher_forcing_velocity

TEACHER_KINDS = {"TeacherModule": "bidirectional", "DistillationModule": "causal_teacher_forcing"}
EXACT = "exact"  # --teacher exact: the toy world's exact teacher over a bank of the world's videos


def _state_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    return list(torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {}))


def _recorded_objectives(path: Path) -> tuple[Path, list[tuple[str, dict]]] | None:
    """The objectives in the training run's ``config.yaml`` (beside an export or above ``checkpoints/``)."""
    import yaml

    for config in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if config.is_file():
            try:
                objectives = yaml.safe_load(config.read_text())["model"]["init_args"]["objectives"]
                return config, [(str(o.get("class_path", "")).rsplit(".", 1)[-1], o.get("init_args") or {})
                                for o in objectives]
            except (KeyError, TypeError, AttributeError, yaml.YAMLError):
                return None
    return None


def load_trajectory_teacher(path: str | Path, block_size: int | None = None, use_ema: bool | None = None,
                            log: Callable[[str], None] = lambda message: None):
    """(module, teacher kind, velocity for a ground-truth batch, index fields) of a teacher checkpoint.

    A ``TeacherModule`` is sampled as is (bidirectional); a ``DistillationModule`` gives its causal generator
    with ``block_size`` (default: the trained one) and its EMA weights (``use_ema`` None: EMA when present).
    """
    path = Path(path)
    if path.is_dir() and WanModelFolder.looks_like(path):
        return load_wan_folder_teacher(path, block_size, use_ema, log)
    try:
        module = load_trained_module(path, expected=tuple(TEACHER_KINDS))
    except RuntimeError as error:  # a strict state-dict load that misses keys
        if not any(k.startswith("generator.") for k in _state_keys(path)):
            raise ValueError(
                f"{path} holds no causal generator weights ('generator.*'): it cannot be the causal teacher. Pass "
                "the export of a Causal Forcing stage-1 run (configs/toy/causal_forcing_ar_diffusion.yaml: "
                "runs/<name>/version_N/weights.safetensors or checkpoints/last.ckpt), or a TeacherModule for "
                "the bidirectional export."
            ) from error
        raise
    kind = TEACHER_KINDS[type(module).__name__]
    if isinstance(module, TeacherModule):
        if block_size is not None or use_ema is not None:
            raise ValueError(f"--block-size and --ema choose the causal teacher's layout and weights; "
                             f"{path} holds a TeacherModule (bidirectional teacher). Drop them, or pass the export "
                             "of a Causal Forcing stage-1 DistillationModule.")
        log(f"Teacher {path}: TeacherModule → bidirectional teacher")
        fields = dict(teacher_kind=kind, block_size=None, first_block_size=None, teacher_weights="model")
        return module, kind, lambda clean: module.model, fields
    recorded = _recorded_objectives(path)
    if recorded is not None and not any(name == "CausalDiffusion" and args.get("teacher_forcing", True)
                                        for name, args in recorded[1]):
        log(f"[yellow]Warning: {recorded[0]} records the objectives {[name for name, _ in recorded[1]]}, not "
            "CausalDiffusion(teacher_forcing: true): this generator was not trained as Causal Forcing's "
            "teacher-forcing AR-diffusion model, so its trajectories may not suit the causal-ODE stage.")
    trained = dict(module.hparams)
    block_size = trained.get("block_size", 1) if block_size is None else block_size
    first_block_size = trained.get("first_block_size")
    if use_ema and not module.has_ema:
        raise ValueError(f"{path} holds no EMA of its generator (ema_start null or not reached); "
                         "pass --ema false (or nothing) to use the generator's own weights.")
    ema = module.has_ema if use_ema is None else use_ema
    generator = causal_generator_from(module, block_size=block_size, first_block_size=first_block_size, use_ema=ema)
    weights = "generator_ema" if ema else "generator"
    layout = f"blocks of {block_size} latent frames" + (f" after a first block of {first_block_size}"
                                                        if first_block_size else "")
    log(f"Teacher {path}: DistillationModule → causal teacher forcing on the ground-truth context "
        f"({layout}, {'EMA' if ema else 'raw generator'} weights '{weights}')")
    fields = dict(teacher_kind=kind, block_size=block_size, first_block_size=first_block_size, teacher_weights=weights)
    return module, kind, lambda clean: teacher_forcing_velocity(generator, clean), fields


def load_wan_folder_teacher(path: Path, block_size: int | None, use_ema: bool | None,
                            log: Callable[[str], None]):
    """(module, kind, velocity for a ground-truth batch, index fields) of a Wan2.1 diffusers folder's transformer as
    the bidirectional teacher, with the folder's VAE and umT5 (loaded only when used)."""
    if block_size is not None or use_ema is not None:
        raise ValueError(f"--block-size and --ema choose a causal teacher's layout and weights; {path} is a Wan2.1 "
                         "folder (a bidirectional teacher). Drop them.")
    folder = WanModelFolder(path)
    problems = folder.layout_problems()
    if problems:
        raise ValueError(f"Teacher folder {path} is not a Wan2.1 diffusers folder:\n  - " + "\n  - ".join(problems))
    recorded = folder.config("transformer")
    backbone = WanConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items()
                            if k in BACKBONE_FIELDS})
    codec, text_encoder = wan_components(path)
    module = TeacherModule(backbone=backbone, codec=codec, text_encoder=text_encoder, init_weights=str(path))
    module.configure_model()
    log(f"Teacher {path}: a Wan2.1 diffusers folder → bidirectional teacher (its transformer/, vae/, text_encoder/)")
    fields = dict(teacher_kind="bidirectional", block_size=None, first_block_size=None, teacher_weights="transformer")
    return module, "bidirectional", lambda clean: module.model, fields


class ExactTrajectoryTeacher:
    """The toy world's exact teacher as a trajectory teacher: its codec, its text encoder, itself as the model."""

    def __init__(self, teacher) -> None:
        self.model, self.codec = teacher, teacher.codec

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.text_encoder(prompts)

    def eval(self) -> "ExactTrajectoryTeacher":
        self.model.eval()
        return self


def load_exact_teacher(index: dict, first: dict, bank_size: int, bank_seed: int | None, negative_prompt: str,
                       log: Callable[[str], None], spatial_factor: int = 2):
    """(teacher, kind, velocity for a ground-truth batch, index fields) of the exact toy teacher, its bank
    rendered at the frames and size of the source's first sample and its recorded background, its
    unconditional prompt the negative prompt."""
    from oneforcing.toy.exact_bank import BANK_SEED, ExactToyTeacher

    if "pixels" not in first:
        raise ValueError("--teacher exact renders a bank of toy pixel videos; the source split holds latents only. "
                         "Point --source at a split written by `oneforcing data toy`.")
    if index.get("world") != "toy":
        raise ValueError("--teacher exact needs a toy-world source split (written by `oneforcing data toy`); this one "
                         f"records world={index.get('world')!r}.")
    if index.get("max_objects", 1) != 1:
        raise ValueError("--teacher exact covers one-object videos; the source split was written with "
                         f"--max-objects {index['max_objects']}. Write it with --max-objects 1.")
    seed = BANK_SEED if bank_seed is None else bank_seed
    num_frames, _, size, _ = first["pixels"].shape  # (F, 3, H, W)
    background = index.get("background", "textured")  # splits written before the flat world were textured
    teacher = ExactToyTeacher(bank_size_per_caption=bank_size, seed=seed, num_frames=num_frames, frame_size=size,
                              background=background, unconditional_prompt=negative_prompt,
                              spatial_factor=spatial_factor)
    log(f"Teacher: the exact toy teacher over {bank_size} videos per caption (bank seed {seed}, "
        f"{teacher.bank_bytes / 2**20:.0f} MiB)")
    fields = dict(teacher_kind=EXACT, block_size=None, first_block_size=None,
                  teacher_weights=f"bank of {bank_size} videos per caption, seed {seed}")
    module = ExactTrajectoryTeacher(teacher)
    return module, EXACT, lambda clean: teacher, fields
