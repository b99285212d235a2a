"""Every configs/wan2.1 recipe trains 2 iterations through the CLI on the tiny Wan folder (bf16-mixed), and the whole
chain runs: data encode -> trajectories -> ODE init -> One-Forcing -> sample -> mp4.

The recipes are shrunk, nothing else: the backbone (and teacher) to the tiny folder's transformer, 6 latent
frames of 32×32, GAN feature layers and head sizes to fit 2 blocks, the gradient window to the frames; CPU, one
process, no validation, no loader workers. Weights the recipes read from checkpoints/ come from the tiny folder
(or, in the chain, from the previous stage's export).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, WAN_CLIP, require_real_extra

from oneforcing.cli import OneForcingCLI
from oneforcing.commands.trajectories import export_trajectories
from oneforcing.data.shards import read_index
from oneforcing.models.text_encoders import UMT5TextEncoder
from oneforcing.models.tiny_wan import tiny_recipe

require_real_extra()

WAN_CONFIGS = sorted((REPO_ROOT / "configs" / "wan2.1").glob("*.yaml"))
LATENT_FRAMES = (WAN_CLIP["num_frames"] - 1) // 4 + 1  # 6
PRECISION = "bf16-mixed"


def shrink(config: Path, model_dir: Path, data_root: Path, out: Path, generator_weights: str | None = None) -> Path:
    """The recipe at tiny sizes (``tiny_recipe``), at the test clip's latent frames and size, in bf16-mixed."""
    return tiny_recipe(config, model_dir, data_root, out, generator_weights, num_frames=LATENT_FRAMES,
                       frame_size=(WAN_CLIP["height"], WAN_CLIP["width"]), precision=PRECISION)


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["oneforcing"])  # LightningCLI warns when pytest's own arguments are present


def fit(config: Path):
    cli = OneForcingCLI(args=["fit", "--config", str(config)])
    return cli.model, Path(cli.trainer.log_dir)


@pytest.fixture(scope="module")
def trajectory_data(wan_user_data, tiny_wan_dir, tmp_path_factory) -> Path:
    """`data trajectories` of the encoded videos with the tiny folder as the bidirectional teacher."""
    root = tmp_path_factory.mktemp("wan_trajectories")
    export_trajectories(str(tiny_wan_dir), str(wan_user_data["latents"] / "train"), str(root / "train"),
                        guidance_scale=6.0, batch_size=4, progress=False)
    (root / "val").symlink_to(root / "train", target_is_directory=True)
    return root


def data_for(config: Path, wan_user_data: dict, trajectory_data: Path) -> Path:
    text = config.read_text()
    if "TrajectoryDistillation" in text:
        return trajectory_data
    return wan_user_data["prompts"] if "GAN" not in text and "Consistency" not in text else wan_user_data["latents"]


def test_trajectories_of_a_wan_folder_teacher_carry_the_cached_prompts(trajectory_data, wan_user_data):
    index = read_index(trajectory_data / "train")
    assert index["teacher_kind"] == "bidirectional" and index["total"] == 4
    assert "prompt_embedding.safetensors" in index["members"] and index["context_length"] == 512
    assert index["negative_prompt"] == read_index(wan_user_data["latents"] / "train")["negative_prompt"]
    assert (trajectory_data / "train" / "negative_prompt.safetensors").is_file()


@pytest.mark.parametrize("config", WAN_CONFIGS, ids=lambda p: p.stem)
def test_wan_recipe_trains_two_iterations_on_the_tiny_folder(config, tiny_wan_dir, wan_user_data, trajectory_data,
                                                             tmp_path, monkeypatch):
    def refuse(self, prompts):
        raise AssertionError(f"umT5 ran during training on {prompts}: the data cache every context")

    monkeypatch.setattr(UMT5TextEncoder, "forward", refuse)
    module, log_dir = fit(shrink(config, tiny_wan_dir, data_for(config, wan_user_data, trajectory_data), tmp_path))
    assert int(module.iteration) == 2 and module.trainer.precision == PRECISION
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())
    assert (log_dir / "weights.safetensors").is_file()


@pytest.mark.slow
def test_the_wan_chain_from_videos_to_an_mp4(tiny_wan_dir, tmp_path):
    """data encode -> data trajectories -> ODE init -> One-Forcing -> sample (VAE decode) -> mp4, via the CLI."""
    import imageio.v3 as iio
    from conftest import write_test_videos

    from oneforcing.cli import main

    videos = write_test_videos(tmp_path / "videos")
    clip = [f"--num-frames={WAN_CLIP['num_frames']}", f"--height={WAN_CLIP['height']}", f"--width={WAN_CLIP['width']}",
            f"--fps={WAN_CLIP['fps']}"]
    main(["data", "encode", "--videos", str(videos), "--model-dir", str(tiny_wan_dir), "--out",
          str(tmp_path / "latents" / "train"), "--samples-per-shard", "2", *clip])
    (tmp_path / "latents" / "val").symlink_to(tmp_path / "latents" / "train")
    report = json.loads((tmp_path / "latents" / "train" / "report.json").read_text())
    assert report["encoded"] == 4 and report["skipped"] == 4
    main(["data", "trajectories", "--teacher", str(tiny_wan_dir), "--source", str(tmp_path / "latents" / "train"),
          "--out", str(tmp_path / "ode" / "train"), "--guidance-scale", "6", "--batch-size", "4"])
    (tmp_path / "ode" / "val").symlink_to(tmp_path / "ode" / "train")
    configs = REPO_ROOT / "configs" / "wan2.1"
    _, ode_dir = fit(shrink(configs / "ode_init_framewise.yaml", tiny_wan_dir, tmp_path / "ode", tmp_path))
    one_forcing, of_dir = fit(shrink(configs / "one_forcing_framewise.yaml", tiny_wan_dir, tmp_path / "latents",
                                     tmp_path, generator_weights=str(ode_dir / "weights.safetensors")))
    assert int(one_forcing.iteration) == 2
    main(["sample", "--checkpoint", str(of_dir / "weights.safetensors"), "--prompt", "a cat walks on the beach",
          "--format", "mp4", "--out", str(tmp_path / "samples")])
    (video,) = (tmp_path / "samples").glob("*.mp4")
    frames = iio.imread(video, plugin="FFMPEG", index=None)
    assert frames.shape == (WAN_CLIP["num_frames"], 4 * WAN_CLIP["height"], 4 * WAN_CLIP["width"], 3)  # 4x upscaled
