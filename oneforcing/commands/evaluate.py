"""``oneforcing evaluate``: the toy-world metrics of one trained model (design §8), as JSON and markdown.

A checkpoint (``.ckpt`` or an exported ``.safetensors``) or a run directory goes in. The model generates one
video per caption of a held-out set of real toy videos (``--real-seed``, disjoint from the training streams),
and every metric of ``oneforcing.evaluation.metrics`` compares them with those real videos. A causal student
also rolls out ``--long-frames`` frames over a rolling window of the training length, for drift. With
``--steps-sweep`` the short-video metrics are repeated at other step counts (for plots against steps).

Out (``--out``): ``metrics.json`` (metrics, sweep, per-frame curves, provenance), ``metrics.md`` and
``samples.safetensors`` + ``samples.gif`` (the first prompts, for ``oneforcing compare``'s GIF grid).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from safetensors.torch import save_file

from oneforcing.data.toy_world import make_video
from oneforcing.lightning_modules.checkpoints import causal_generator_from, load_trained_module, weights_choice
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.sampling.schedules import student_sigmas
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators
from oneforcing.video_io import atomic_write_bytes, gif_bytes, video_grid

REAL_SEED = 424242  # held-out toy stream: the training data use seeds 0.. and 0 + 1_000_003 (val)
GRID_PROMPTS = 8    # prompts kept as samples for the comparison's GIF grid


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing evaluate", description="Toy-world metrics of one trained model.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str | None, default=None, help=".ckpt or exported .safetensors")
    p.add_argument("--run", type=str | None, default=None,
                   help="a run directory (its newest version's weights.safetensors or checkpoints/last.ckpt)")
    p.add_argument("--out", type=str, required=True, help="directory for metrics.json, metrics.md and samples")
    p.add_argument("--label", type=str | None, default=None, help="method name in reports (default: the run name)")
    p.add_argument("--seed", type=int, default=0, help="the run's training seed; also seeds the sampling noise")
    p.add_argument("--num-videos", "--num_videos", dest="num_videos", type=int, default=64)
    p.add_argument("--real-seed", "--real_seed", dest="real_seed", type=int, default=REAL_SEED)
    p.add_argument("--steps", type=int | None, default=None,
                   help="sampling steps (default: the student's training schedule, the teacher's 48)")
    p.add_argument("--steps-sweep", "--steps_sweep", dest="steps_sweep", type=list[int], default=[],
                   help="extra step counts for the short-video metrics, e.g. [1, 2, 4]")
    p.add_argument("--long-frames", "--long_frames", dest="long_frames", type=int, default=48,
                   help="frames of the drift roll-out (students only; 0 disables), >= 4x the training length")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    p.add_argument("--ema", type=bool | None, default=None,
                   help="students: true the generator's EMA weights, false its raw weights (default: the EMA when "
                        "present); the report records which were used")
    return p


def resolve_checkpoint(checkpoint: str | None, run: str | None) -> Path:
    """The weights to evaluate: the given file, or the newest export/checkpoint of a run directory."""
    if (checkpoint is None) == (run is None):
        raise ValueError("Pass exactly one of --checkpoint FILE or --run DIR.")
    if checkpoint is not None:
        return Path(checkpoint)
    root = Path(run)
    if not root.is_dir():
        raise FileNotFoundError(f"Run directory {root} does not exist.")
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]) if p.name[8:].isdigit() else -1)
    for directory in [*reversed(versions), root]:
        for candidate in (directory / "weights.safetensors", directory / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"Run directory {root} holds no weights.safetensors or checkpoints/last.ckpt "
                            "(in itself or a version_* folder): was the run trained with the ExportWeights callback?")


def real_toy_set(num_videos: int, seed: int, num_frames: int = 12, size: int = 32, max_objects: int = 1,
                 background: str = "flat") -> tuple[torch.Tensor, list[str]]:
    """Held-out real toy videos (N, F, 3, H, W) in [-1, 1] and their captions (the default world's)."""
    videos = [make_video(seed, i, num_frames=num_frames, size=size, max_objects=max_objects, background=background)
              for i in range(num_videos)]
    pixels = torch.from_numpy(np.stack([v.pixels for v in videos])).float() / 127.5 - 1.0
    return pixels, [v.caption for v in videos]


def sample(module, prompts: list[str], seed: int, steps: int | None, batch_size: int,
           num_frames: int | None = None, window: int | None = None, use_ema: bool = True) -> torch.Tensor:
    """Pixel videos (N, F, 3, H, W): the student's streaming sampler, or the teacher's Euler sampler."""
    videos = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start: start + batch_size]
            if isinstance(module, DistillationModule):
                hp = module.hparams
                generator = causal_generator_from(module, hp.block_size, hp.first_block_size, window, use_ema=use_ema)
                sigmas = student_sigmas(steps, hp.warp_shift) if steps else module.step_sigmas
                sampler = StreamingSampler(generator, sigmas, first_block_sigmas=module.first_block_sigmas)
                latents = sampler.sample(module.encode_prompts(chunk), num_frames or hp.num_frames,
                                         module.latent_shape(), per_prompt_generators(seed + start, len(chunk)))
                videos.append(module.codec.decode(latents))
            else:
                videos.append(module.generate(chunk, seed=seed + start, num_steps=steps))
    return torch.cat(videos)


def default_steps(module) -> int:
    return len(module.step_sigmas) if isinstance(module, DistillationModule) else module.hparams.sample_steps


def markdown(report: dict) -> str:
    lines = [f"# {report['label']} (seed {report['seed']})", "",
             f"`{report['checkpoint']}` ({report['weights']} weights), {report['num_videos']} videos at {report['steps']} steps "
             f"against held-out real toy videos (seed {report['real_seed']}).", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in report["metrics"].items() if isinstance(v, (int, float))]
    for steps, metrics in report["sweep"].items():
        lines += ["", f"## {steps} steps", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(checkpoint: Path, out: Path, label: str, seed: int = 0, num_videos: int = 64,
                        real_seed: int = REAL_SEED, steps: int | None = None, steps_sweep: list[int] = (),
                        long_frames: int = 48, batch_size: int = 32, ema: bool | None = None) -> dict:
    """Generate, score and write the report; returns it."""
    from oneforcing.evaluation.feature_net import load_feature_net
    from oneforcing.evaluation.metrics import evaluate_videos, per_frame_curves

    if num_videos < 2:
        raise ValueError(f"--num-videos={num_videos}: the distribution metrics need at least 2 videos.")
    module = load_trained_module(checkpoint)
    num_frames = module.hparams.num_frames
    if isinstance(module, DistillationModule) and long_frames and long_frames < 4 * num_frames:
        raise ValueError(f"--long-frames={long_frames} must be 0 or at least 4x the training length "
                         f"({4 * num_frames}) for a drift measurement.")
    real, prompts = real_toy_set(num_videos, real_seed, num_frames, module.hparams.frame_size)
    for prompt in prompts:  # prompts outside the model's vocabulary fail here, before any sampling
        module.encode_prompts([prompt])
    weights = weights_choice(module, ema)
    use_ema = weights == "ema"
    net = load_feature_net()
    steps = steps or default_steps(module)
    fake = sample(module, prompts, seed, steps, batch_size, use_ema=use_ema)
    long_fake = None
    if isinstance(module, DistillationModule) and long_frames:
        long_fake = sample(module, prompts, seed, steps, batch_size, num_frames=long_frames, window=num_frames,
                           use_ema=use_ema)
    report = {
        "label": label, "seed": seed, "checkpoint": str(checkpoint), "module": type(module).__name__, "weights": weights,
        "steps": steps, "num_videos": num_videos, "real_seed": real_seed, "long_frames": long_frames if long_fake is not None else 0,
        "metrics": evaluate_videos(fake, real, prompts, net, long_fake=long_fake, window=num_frames),
        "curves": per_frame_curves(fake, real, long_fake=long_fake, window=num_frames),
        "sweep": {}, "prompts": prompts[:GRID_PROMPTS],
    }
    for extra in steps_sweep:
        if extra != steps:
            report["sweep"][str(extra)] = evaluate_videos(sample(module, prompts, seed, extra, batch_size,
                                                                 use_ema=use_ema), real, prompts, net)
    report["sweep"][str(steps)] = {k: v for k, v in report["metrics"].items() if not k.startswith("drift")}
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(report, default=float), parse_constant=lambda c: None)  # NaN -> null
    atomic_write_bytes(out / "metrics.json", json.dumps(clean, indent=1, allow_nan=False).encode())
    atomic_write_bytes(out / "metrics.md", markdown(report).encode())
    grid = fake[:GRID_PROMPTS].contiguous()
    save_file({"videos": grid.float()}, str(out / "samples.safetensors"), metadata={"prompts": json.dumps(prompts[:GRID_PROMPTS])})
    atomic_write_bytes(out / "samples.gif", gif_bytes(video_grid(grid)))
    return report


def evaluate_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    checkpoint = resolve_checkpoint(cfg.checkpoint, cfg.run)
    label = cfg.label or (Path(cfg.run).name if cfg.run else checkpoint.stem)
    report = evaluate_checkpoint(checkpoint, Path(cfg.out), label, cfg.seed, cfg.num_videos, cfg.real_seed, cfg.steps,
                                 cfg.steps_sweep, cfg.long_frames, cfg.batch_size, cfg.ema)
    shown = {k: round(v, 4) for k, v in report["metrics"].items() if isinstance(v, float) and not math.isnan(v)}
    Console().print(f"[green]{label}[/green] ({report['steps']} steps, {report['weights']} weights): {shown}\nWrote {cfg.out}/metrics.json and metrics.md")
