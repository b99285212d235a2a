"""``oneforcing sample``: videos from a trained checkpoint and prompts, written as GIF or MP4 files."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.video_io import write_video


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing sample", description="Sample videos from a checkpoint.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str, required=True, help=".ckpt or exported .safetensors")
    p.add_argument("--prompt", type=list[str], default=[], help="one or more prompts (repeat the flag)")
    p.add_argument("--prompt-file", "--prompt_file", dest="prompt_file", type=str | None, default=None,
                   help="a text file with one prompt per line")
    p.add_argument("--out", type=str, default="samples")
    p.add_argument("--format", type=str, default="gif", choices=["gif", "mp4"])
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--steps", type=int | None, default=None, help="sampling steps (default: the module's)")
    p.add_argument("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float | None, default=None,
                   help="CFG weight w in uncond + w·(cond − uncond) (the papers' g is w − 1)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    return p


def read_prompts(prompts: list[str], prompt_file: str | None) -> list[str]:
    prompts = list(prompts)
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


def sample_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    prompts = read_prompts(cfg.prompt, cfg.prompt_file)
    module = load_trained_module(cfg.checkpoint)
    for p in prompts:  # validate every prompt before sampling any
        module.encode_prompts([p])
    out = Path(cfg.out)
    console = Console()
    written = []
    with torch.no_grad():
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start: start + cfg.batch_size]
            videos = module.generate(chunk, seed=cfg.seed + start, num_steps=cfg.steps,
                                     guidance_scale=cfg.guidance_scale)
            for i, (prompt, video) in enumerate(zip(chunk, videos)):
                written.append(write_video(out / f"{start + i:04d}_{slug(prompt)}.{cfg.format}", video))
    console.print(f"[green]Wrote {len(written)} videos to {out}/")
