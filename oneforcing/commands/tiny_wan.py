"""``oneforcing tiny-wan``: a tiny random Wan2.1 diffusers folder, to try the real-model path on a laptop.

Writes ``OUT/{transformer,vae,text_encoder,tokenizer}/`` in the on-disk layout of Wan2.1-T2V-1.3B-Diffusers
(``oneforcing.models.tiny_wan``), plus two files that stand in for what users download from the reference
trainers: ``OUT/released.pt``, a generator in Wan's original naming saved the way Self-Forcing / One-Forcing save
theirs ({generator, generator_ema} with an FSDP prefix), and ``OUT/recipe.yaml``, the matching sampling recipe
(a tiny version of configs/wan2.1/one_forcing_framewise.yaml). Then::

    oneforcing sample --checkpoint OUT/released.pt --released-config OUT/recipe.yaml --prompt "a cat" --out samples

Every loader runs on the real classes; only the sizes differ, and the weights are random (the videos are noise).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from oneforcing.models.released_checkpoints import to_original
from oneforcing.models.text_encoders import WAN_NEGATIVE_PROMPT
from oneforcing.models.tiny_wan import TINY_WAN_BACKBONE, write_tiny_wan


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing tiny-wan", description="Write a tiny random Wan2.1 diffusers folder.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--out", type=str, required=True, help="the folder to write (e.g. checkpoints/tiny-wan)")
    p.add_argument("--seed", type=int, default=0)
    return p


def tiny_recipe(model_dir: str | Path, num_frames: int = 3, frame_size: int = 32) -> dict:
    """The ``model`` section of a tiny One-Forcing framewise recipe over the tiny folder (for sampling)."""
    return {"model": {"class_path": "oneforcing.lightning_modules.distillation.DistillationModule", "init_args": {
        "objectives": [], "backbone": dict(TINY_WAN_BACKBONE), "model_dir": str(model_dir),
        "negative_prompt": WAN_NEGATIVE_PROMPT, "num_frames": num_frames, "frame_size": [frame_size, frame_size],
        "block_size": 1, "denoising_steps": [1000], "ema_start": 0}}}


def write_released_stand_in(path: str | Path, transformer_dir: str | Path, prefix: str = "model._fsdp_wrapped_module.",
                            seed: int = 1) -> Path:
    """A released-format ``.pt``: {generator, generator_ema, step} in Wan's original naming with ``prefix``; the
    generator is the folder's transformer, the EMA a perturbed copy (so the two are told apart)."""
    from diffusers import WanTransformer3DModel

    state = WanTransformer3DModel.from_pretrained(transformer_dir, local_files_only=True).state_dict()
    g = torch.Generator().manual_seed(seed)
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    checkpoint = {"step": 0, "generator": {prefix + k: v for k, v in to_original(state).items()},
                  "generator_ema": {prefix + k: v for k, v in to_original(ema).items()}}
    torch.save(checkpoint, path)
    return Path(path)


def tiny_wan_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    out = write_tiny_wan(cfg.out, seed=cfg.seed)
    write_released_stand_in(out / "released.pt", out / "transformer", seed=cfg.seed + 1)
    (out / "recipe.yaml").write_text("# a tiny One-Forcing framewise sampling recipe over this folder "
                                     "(oneforcing tiny-wan)\n" + yaml.safe_dump(tiny_recipe(out), allow_unicode=True))
    Console().print(f"[green]Wrote a tiny Wan2.1 folder to {out}/[/green] (transformer/, vae/, text_encoder/, "
                    f"tokenizer/) and {out}/released.pt + {out}/recipe.yaml")
