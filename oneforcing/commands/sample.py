"""``oneforcing sample``: videos from a trained checkpoint and prompts, written as GIF or MP4 files.

Two samplers: ``euler`` (the bidirectional teacher's many-step ODE sampler with CFG) and ``streaming``
(the causal student, block by block over a KV cache, 1..N steps per block, optional first-frame
enhancement and rolling window). ``auto`` picks streaming for distilled students and euler for teachers;
streaming from a teacher checkpoint runs the causal student initialised from it.
"""

from __future__ import annotations

from typing import Literal

import re
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from oneforcing.lightning_modules.checkpoints import load_for_sampling, streaming_sampler_from
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators
from oneforcing.video_io import write_video


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing sample", description="Sample videos from a checkpoint.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str, required=True,
                   help=".ckpt, exported .safetensors, or with --released-config a reference trainer's released .pt")
    add_released_arguments(p)
    p.add_argument("--prompt", type=str, action="append", default=None, help="a prompt (repeat the flag for more)")
    p.add_argument("--prompt-file", "--prompt_file", dest="prompt_file", type=str | None, default=None,
                   help="a text file with one prompt per line")
    p.add_argument("--out", type=str, default="samples")
    p.add_argument("--format", type=Literal["gif", "mp4"], default="gif", help="gif or mp4")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    p.add_argument("--sampler", type=Literal["auto", "euler", "streaming"], default="auto",
                   help="auto: streaming for a causal student, euler for a bidirectional teacher")
    p.add_argument("--steps", type=int | None, default=None,
                   help="denoising steps (euler: the module's default; streaming: per block, default: the "
                        "student's training schedule, else 1)")
    p.add_argument("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float | None, default=None,
                   help="euler only: CFG weight w in uncond + w·(cond − uncond) (the papers' g is w − 1)")
    p.add_argument("--guidance-interval", "--guidance_interval", dest="guidance_interval",
                   type=tuple[float, float] | None, default=None,
                   help="euler only: guide only the steps with σ in (lo, hi], e.g. [0.25, 1.0] (default: the module's)")
    p.add_argument("--block-size", "--block_size", dest="block_size", type=int | None, default=None,
                   help="streaming: latent frames per block (1 framewise, 3 chunkwise; default: the student's, else 1)")
    p.add_argument("--first-block-size", "--first_block_size", dest="first_block_size", type=int | None, default=None,
                   help="streaming: first-frame enhancement, size of the first block (e.g. 4; default: the student's)")
    p.add_argument("--first-block-steps", "--first_block_steps", dest="first_block_steps", type=int | None,
                   default=None, help="streaming: steps of the first block (e.g. 4)")
    p.add_argument("--num-frames", "--num_frames", dest="num_frames", type=int | None, default=None,
                   help="streaming: latent frames to generate (default: the training length)")
    p.add_argument("--window", type=int | None, default=None, help="streaming: rolling attention window in frames")
    p.add_argument("--sink", type=int, default=0, help="streaming: sink frames kept in the rolling window")
    p.add_argument("--ema", type=bool | None, default=None,
                   help="students: true the generator's EMA weights, false its raw weights (default: the EMA when "
                        "present); the output says which were used")
    p.add_argument("--shift", type=float | None, default=None,
                   help="shift of the σ schedule (euler: default the module's sample_shift; streaming: of the "
                        "warped step list, default 5)")
    return p


def add_released_arguments(p: ArgumentParser) -> None:
    p.add_argument("--released-config", "--released_config", dest="released_config", type=str | None, default=None,
                   help="the checkpoint is a .pt released by Self-Forcing / Causal Forcing / One-Forcing (Wan's original "
                        "naming); this recipe gives its architecture and schedule, e.g. "
                        "configs/wan2.1/one_forcing_framewise.yaml")
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", type=str | None, default=None,
                   help="with --released-config: the Wan2.1 diffusers folder for the VAE and umT5 (default: the "
                        "recipe's model_dir)")


def read_prompts(prompts: list[str] | None, prompt_file: str | None) -> list[str]:
    prompts = list(prompts or [])
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"Prompt file {path} does not exist.")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("No prompts: pass --prompt TEXT (repeatable) or --prompt-file FILE.")
    return prompts


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit]


def streaming_videos(module, sampler: StreamingSampler, prompts: list[str], seed: int, num_frames: int) -> torch.Tensor:
    """Pixel videos (B, F, 3, H, W) from the causal student, decoded after generation."""
    if hasattr(module, "latent_shape"):
        latent_shape = module.latent_shape()
    else:
        size = module.hparams.frame_size // module.codec.spatial_factor
        latent_shape = (module.codec.latent_channels, size, size)
    latents = sampler.sample(module.encode_prompts(prompts), num_frames, latent_shape,
                             per_prompt_generators(seed, len(prompts)))
    return module.codec.decode(latents)


def sample_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    prompts = read_prompts(cfg.prompt, cfg.prompt_file)
    module = load_for_sampling(cfg.checkpoint, cfg.released_config, cfg.model_dir)
    for p in prompts:  # validate every prompt before sampling any
        module.encode_prompts([p])
    is_student = hasattr(module, "generator_weights")
    if cfg.sampler == "euler" and is_student:
        raise ValueError(f"{cfg.checkpoint} holds a causal student, which has no many-step Euler sampler; "
                         "use --sampler streaming (or auto).")
    use_streaming = cfg.sampler == "streaming" or (cfg.sampler == "auto" and is_student)
    if use_streaming:
        sampler, weights = streaming_sampler_from(module, cfg.block_size, cfg.first_block_size, cfg.steps,
                                                  cfg.first_block_steps, cfg.shift, cfg.window, cfg.sink, cfg.ema)
        num_frames = cfg.num_frames or module.hparams.num_frames
    out = Path(cfg.out)
    written = []
    with torch.no_grad():
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start: start + cfg.batch_size]
            if use_streaming:
                videos = streaming_videos(module, sampler, chunk, cfg.seed + start, num_frames)
            else:
                videos = module.generate(chunk, seed=cfg.seed + start, num_steps=cfg.steps,
                                         guidance_scale=cfg.guidance_scale, shift=cfg.shift,
                                         guidance_interval=cfg.guidance_interval)
            for i, (prompt, video) in enumerate(zip(chunk, videos)):
                written.append(write_video(out / f"{start + i:04d}_{slug(prompt)}.{cfg.format}", video))
    used = f"streaming sampler, {weights} weights" if use_streaming else "euler sampler, teacher weights"
    Console().print(f"[green]Wrote {len(written)} videos to {out}/ ({used})")
