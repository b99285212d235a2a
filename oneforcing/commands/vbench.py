"""``oneforcing vbench``: sample a prompt file into a folder named in VBench's convention.

VBench's standard sampling writes ``{prompt}-{index}.mp4`` for index 0..4 (5 samples per prompt, each with
its own seed) into one folder, which ``vbench evaluate --videos_path DIR`` then reads. Sample ``index`` of
prompt ``i`` uses seed ``seed + index`` so that every prompt's k-th video shares a seed, as in VBench's
pseudo-code. Prompts containing a path separator cannot be file names and are refused up front.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from rich.progress import track

from oneforcing.commands.evaluate import sample
from oneforcing.commands.sample import add_released_arguments, read_prompts
from oneforcing.lightning_modules.checkpoints import load_for_sampling
from oneforcing.video_io import write_video


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing vbench", description="Sample VBench prompts as {prompt}-{index}.mp4.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str, required=True,
                   help=".ckpt, exported .safetensors, or with --released-config a reference trainer's released .pt")
    add_released_arguments(p)
    p.add_argument("--prompt-file", "--prompt_file", dest="prompt_file", type=str, required=True,
                   help="one prompt per line (e.g. VBench's prompts/all_dimension.txt)")
    p.add_argument("--out", type=str, required=True)
    p.add_argument("--samples-per-prompt", "--samples_per_prompt", dest="samples_per_prompt", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int | None, default=None, help="sampling steps (default: the model's own)")
    p.add_argument("--fps", type=int, default=16)
    return p


def vbench_name(prompt: str, index: int) -> str:
    """VBench's file name for sample ``index`` of ``prompt``."""
    return f"{prompt}-{index}.mp4"


def export_vbench(checkpoint: str, prompt_file: str, out: str | Path, samples_per_prompt: int = 5, seed: int = 0,
                  steps: int | None = None, fps: int = 16, released_config: str | None = None,
                  model_dir: str | None = None) -> list[Path]:
    prompts = read_prompts(None, prompt_file)
    bad = [p for p in prompts if "/" in p or "\\" in p or p in (".", "..")]
    if bad:
        raise ValueError(f"{len(bad)} prompts cannot be file names (path separators), e.g. {bad[0]!r}; "
                         "VBench names videos by their prompt, so edit or drop them.")
    if samples_per_prompt < 1:
        raise ValueError(f"--samples-per-prompt={samples_per_prompt} must be >= 1 (VBench's standard is 5).")
    module = load_for_sampling(checkpoint, released_config, model_dir)
    for prompt in prompts:  # every prompt is checked against the text encoder before sampling any
        module.encode_prompts([prompt])
    out = Path(out)
    written = []
    for index in track(range(samples_per_prompt), description="VBench samples"):
        for prompt in prompts:  # one call per prompt: sample `index` of every prompt shares the seed seed + index
            video = sample(module, [prompt], seed + index, steps, batch_size=1)[0]
            written.append(write_video(out / vbench_name(prompt, index), video, fps=fps, scale=1))
    return written


def vbench_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    written = export_vbench(cfg.checkpoint, cfg.prompt_file, cfg.out, cfg.samples_per_prompt, cfg.seed, cfg.steps,
                            cfg.fps, cfg.released_config, cfg.model_dir)
    Console().print(f"[green]Wrote {len(written)} videos to {cfg.out}/[/green] (VBench naming: prompt-index.mp4)")
