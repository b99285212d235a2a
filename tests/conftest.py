"""Shared fixtures: a tiny toy data set written once per session, a tiny Wan, and the CLI as a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oneforcing.commands.data import write_toy_dataset

# Tiny models on 2 cores: one intra-op thread per process. With more, OpenMP threads contend with the other
# process (DDP's second rank, or any training running beside the tests) and a 24 k-parameter step takes
# seconds instead of milliseconds.
torch.set_num_threads(1)
SUBPROCESS_ENV = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120", OMP_NUM_THREADS="1")

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = REPO_ROOT / "configs" / "toy" / "teacher.yaml"

# A 2-layer Wan of ~24 k parameters. attention_head_dim 12 keeps Wan's RoPE split even:
# h = w = 2·(12 // 6) = 4 and t = 12 - 8 = 4.
TINY_BACKBONE = dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=48, freq_dim=32)
# The unit tests' tiny Wan: its shapes alone (TINY_WAN), and on the toy's space-to-depth latents and text (TINY_TOY).
TINY_WAN = dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=32)
TINY_TOY = dict(TINY_WAN, in_channels=12, out_channels=12, text_dim=46)
TINY_FRAMES = 8
TINY_SIZE = 16
TINY_TRAIN_VIDEOS = 32
TINY_VAL_VIDEOS = 8
TINY_SEED = 0


def load_script(name: str, folder: str = "scripts"):
    """``<folder>/<name>.py`` imported as module ``name`` (scripts and benchmarks are not packages)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_tiny_data(root: Path, seed: int = TINY_SEED, samples_per_shard: int = 16) -> Path:
    write_toy_dataset(root, TINY_TRAIN_VIDEOS, TINY_VAL_VIDEOS, seed, num_frames=TINY_FRAMES, size=TINY_SIZE,
                      samples_per_shard=samples_per_shard, progress=False)
    return root


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """Read-only tiny toy data: 32 train videos in 2 shards, 8 val videos; 8 frames of 16×16."""
    return write_tiny_data(tmp_path_factory.mktemp("toy_data"))


def tiny_backbone_args(prefix: str = "--model.init_args.backbone") -> list[str]:
    return [arg for k, v in TINY_BACKBONE.items() for arg in (f"{prefix}.{k}", str(v))]


def tiny_fit_args(data_root: Path, save_dir: Path, name: str = "tiny", max_steps: int = 3,
                  val_samples: int = 4) -> list[str]:
    """``oneforcing fit`` arguments: the toy teacher config shrunk to a few seconds on one CPU core."""
    return [
        "fit", "--config", str(TEACHER_CONFIG),
        "--data.init_args.root", str(data_root),
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
        "--data.init_args.val_samples", str(val_samples),
        "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", str(max_steps),
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.logger.init_args.name", name,
        *tiny_backbone_args(),
        "--model.init_args.sample_steps", "2",
        "--model.init_args.num_frames", str(TINY_FRAMES),
        "--model.init_args.frame_size", str(TINY_SIZE),
    ]


def run_cli(args: list[str], timeout: float = 300, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """Run ``oneforcing ARGS`` in a fresh interpreter; a timeout fails the test instead of hanging it."""
    return subprocess.run(
        [sys.executable, "-m", "oneforcing.cli", *args],
        cwd=cwd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"


REAL_EXTRA = "needs the 'real' extra (transformers, sentencepiece, peft): pip install -e '.[real]'"


def require_real_extra(*modules: str) -> None:
    """Skip (with the reason written out) when the optional real-model packages are not installed."""
    for module in modules or ("transformers", "sentencepiece"):
        pytest.importorskip(module, reason=REAL_EXTRA)


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """Read-only tiny random Wan2.1 diffusers folder (transformer/, vae/, text_encoder/, tokenizer/)."""
    require_real_extra()
    from oneforcing.models.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "Wan2.1-T2V-tiny-Diffusers")


# --- users' own videos and prompts on the tiny Wan (data encode / prompts) ---------------------------------
# Clips of 21 frames (6 latent frames: fits framewise, chunkwise (3) and first-4-then-1 layouts) of 32×32 at 8 fps.
WAN_CLIP = dict(num_frames=21, height=32, width=32, fps=8.0)
GOOD_VIDEOS = 4
USER_PROMPTS = ("a cat walks on the beach at sunset", "a drone flies over a snowy mountain", "two dogs play in a park",
                "a red circle moving left quickly")


def write_test_videos(root: Path) -> Path:
    """GOOD_VIDEOS usable mp4s (24 frames of 40×48 at 8 fps, .txt captions) and one of each bad kind: too short,
    too tall (a 67 % crop), no caption, not a video."""
    import imageio.v3 as iio
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)

    def video(name: str, frames: int, height: int, width: int, caption: str | None, seed: int) -> None:
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 200, (1, height, width, 3))
        x = (base + 2 * np.arange(frames)[:, None, None, None]).clip(0, 255).astype(np.uint8)  # (F, H, W, 3)
        iio.imwrite(root / name, x, extension=".mp4", fps=8, codec="libx264", macro_block_size=1)
        if caption:
            (root / name).with_suffix(".txt").write_text(caption)

    for i in range(GOOD_VIDEOS):
        video(f"clip{i}.mp4", 24, 40, 48, USER_PROMPTS[i], i)
    video("short.mp4", 10, 40, 48, "a cat", 10)
    video("tall.mp4", 24, 96, 32, "a dog", 11)
    video("uncaptioned.mp4", 24, 40, 48, None, 12)
    (root / "broken.mp4").write_bytes(b"not a video")
    (root / "broken.txt").write_text("a drone")
    return root


@pytest.fixture(scope="session")
def wan_user_data(tmp_path_factory, tiny_wan_dir) -> dict[str, Path]:
    """Read-only: the test videos, their `data encode` split (``latents/train``; ``val`` links to it) and a
    `data prompts` split (``prompts/train``, ``val`` linked) on the tiny Wan."""
    from oneforcing.commands.encode import cache_prompts, encode_videos

    root = tmp_path_factory.mktemp("wan_user_data")
    videos = write_test_videos(root / "videos")
    encode_videos(str(videos), str(root / "latents" / "train"), str(tiny_wan_dir), **WAN_CLIP, samples_per_shard=2,
                  progress=False)
    (root / "prompt_list.txt").write_text("\n".join(USER_PROMPTS) + "\n")
    cache_prompts(str(root / "prompt_list.txt"), str(root / "prompts" / "train"), str(tiny_wan_dir), progress=False)
    for split_root in (root / "latents", root / "prompts"):
        (split_root / "val").symlink_to(split_root / "train", target_is_directory=True)
    return {"videos": videos, "latents": root / "latents", "prompts": root / "prompts",
            "prompt_list": root / "prompt_list.txt"}


# --- the toy distillation recipes at tiny sizes (test_configs, test_engines) ---------------------------------
RECIPE_FRAMES, RECIPE_SIZE = 6, 16  # 6 frames split into blocks of 1 and of 3


@pytest.fixture(scope="session")
def recipe_inputs(tmp_path_factory) -> dict[str, Path]:
    """Tiny toy data, a tiny exported teacher, and its ODE trajectories (8 Euler steps: 0/2/4/6 on the grid)."""
    from oneforcing.callbacks.export import export_weights
    from oneforcing.commands.trajectories import export_trajectories
    from oneforcing.lightning_modules.teacher import TeacherModule

    root = tmp_path_factory.mktemp("recipes")
    write_toy_dataset(root / "toy", 8, 4, seed=0, num_frames=RECIPE_FRAMES, size=RECIPE_SIZE, progress=False)
    teacher = TeacherModule(backbone=dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46),
                            num_frames=RECIPE_FRAMES, frame_size=RECIPE_SIZE)
    teacher.configure_model()
    weights = export_weights(teacher, root / "teacher.safetensors")
    deep = TeacherModule(backbone=dict(TINY_BACKBONE, num_layers=6, in_channels=12, out_channels=12, text_dim=46),
                         num_frames=RECIPE_FRAMES, frame_size=RECIPE_SIZE)  # the GAN recipes pool critic blocks 4 and 5
    deep.configure_model()
    deep_weights = export_weights(deep, root / "teacher6.safetensors")
    for split in ("train", "val"):
        export_trajectories(str(weights), str(root / "toy" / split), str(root / "ode" / split), steps=8,
                            batch_size=8, progress=False)
    return {"toy": root / "toy", "ode": root / "ode", "teacher": weights, "teacher6": deep_weights, "runs": root / "runs"}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    """Random tiny-Wan weights (TINY_TOY, seed 0) as an exported teacher: the modules' teacher and initialisation."""
    from safetensors.torch import save_file

    from oneforcing.models.wan import WanBackbone, WanConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    state = WanBackbone(WanConfig(**TINY_TOY)).transformer.state_dict()
    save_file({f"model.transformer.{k}": v for k, v in state.items()}, path)
    return str(path)
