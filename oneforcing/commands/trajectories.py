"""``oneforcing data trajectories``: sample the teacher's ODE trajectories into shards (pipeline stage 2).

For every caption/video of a source split: Euler-integrate the teacher's probability-flow ODE with CFG
(48 steps, shift 5 by default) from seeded noise, keep the states at the snapshot σ's (by default the
warped 4-step list [1000, 750, 500, 250] at shift 5 = grid indices 0/12/24/36, algorithm-notes §2.4), the
ODE output, and the ground truth beside them. Snapshots must lie on the Euler grid; otherwise the
command fails before sampling, naming the grid values that would fit.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import webdataset as wds
from rich.console import Console
from rich.progress import Progress

from oneforcing.data.datamodule import _decode_skipping_corrupt
from oneforcing.data.shards import encode_sample, read_index, write_shards
from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.models.flow_matching import euler_sigmas, warped_step_sigmas
from oneforcing.sampling.euler import euler_sample


def snapshot_indices(grid: torch.Tensor, snapshot_sigmas: list[float], tolerance: float = 1e-6) -> list[int]:
    """Grid index of each snapshot σ; a ValueError when one is not on the grid."""
    indices = []
    for sigma in snapshot_sigmas:
        distance = (grid[:-1] - sigma).abs()
        index = int(distance.argmin())
        if float(distance[index]) > tolerance:
            raise ValueError(
                f"Snapshot σ={sigma:.6f} is not on the {len(grid) - 1}-step Euler grid (nearest {float(grid[index]):.6f}). "
                "Choose snapshot steps and a step count that line up (e.g. 48 steps with [1000, 750, 500, 250] at "
                "the same shift)."
            )
        indices.append(index)
    return indices


def add_parser(sub) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(description="Teacher ODE trajectories as shards (for trajectory distillation).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--teacher", type=str, required=True, help="teacher weights (.safetensors export or .ckpt)")
    p.add_argument("--source", type=str, required=True, help="caption/video split directory (e.g. data/toy/train)")
    p.add_argument("--out", type=str, required=True, help="output split directory (e.g. data/toy_ode/train)")
    p.add_argument("--num-videos", "--num_videos", dest="num_videos", type=int | None, default=None,
                   help="first N videos of the source (default: all)")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float, default=4.0,
                   help="CFG weight w in uncond + w·(cond − uncond) (the papers' g is w − 1)")
    p.add_argument("--snapshot-steps", "--snapshot_steps", dest="snapshot_steps", type=list[float],
                   default=[1000.0, 750.0, 500.0, 250.0], help="nominal student steps, warped with --shift")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int, default=256)
    sub.add_subcommand("trajectories", p)


def export_trajectories(teacher: str, source: str, out: str, num_videos: int | None = None, steps: int = 48,
                        shift: float = 5.0, guidance_scale: float = 4.0,
                        snapshot_steps: list[float] = (1000.0, 750.0, 500.0, 250.0), batch_size: int = 16,
                        seed: int = 0, samples_per_shard: int = 256, progress: bool = True) -> dict:
    """Write the trajectory split; returns its index."""
    grid = euler_sigmas(steps, shift)
    snapshot_sigmas = warped_step_sigmas(snapshot_steps, shift)
    indices = snapshot_indices(grid, snapshot_sigmas)  # fail before loading anything
    index = read_index(source)
    module = load_trained_module(teacher, expected=("TeacherModule",))
    assert isinstance(module, TeacherModule)
    total = min(num_videos or index["total"], index["total"])
    urls = [str(Path(source) / s["name"]) for s in index["shards"]]
    stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), _decode_skipping_corrupt)
    sigmas_tensor = torch.tensor(snapshot_sigmas, dtype=torch.float32)

    def batches():
        batch = []
        for sample in stream:
            batch.append(sample)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def samples():
        done = 0
        with Progress(disable=not progress) as bar:
            task = bar.add_task("teacher ODE trajectories", total=total)
            for batch in batches():
                batch = batch[: total - done]
                pixels = torch.stack([s["pixels"] for s in batch]).float() / 127.5 - 1.0
                x0 = module.codec.encode(pixels)  # (B, F, C, H, W)
                noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed + done + i))
                                     for i in range(len(batch))])
                kept = {}
                output = euler_sample(module.model, noise, module.encode_prompts([s["caption"] for s in batch]), grid,
                                      module.encode_prompts([""] * len(batch)), guidance_scale,
                                      on_step=lambda i, x, v: kept.__setitem__(i, x.clone()) if i in indices else None)
                trajectory = torch.stack([kept[i] for i in indices], dim=1)  # (B, K, F, C, H, W)
                for i, s in enumerate(batch):
                    attributes = dict(s["attributes"], trajectory_steps=steps, trajectory_shift=shift,
                                      trajectory_guidance=guidance_scale, noise_seed=seed + done + i)
                    yield encode_sample(s["key"], {"pixels": s["pixels"], "trajectory": trajectory[i].half(),
                                                   "trajectory_sigmas": sigmas_tensor, "ode_output": output[i].half()},
                                        s["caption"], attributes)
                done += len(batch)
                bar.update(task, advance=len(batch))
                if done >= total:
                    return

    meta = dict(kind="trajectories", teacher=str(teacher), steps=steps, shift=shift, guidance_scale=guidance_scale,
                snapshot_sigmas=snapshot_sigmas, source=str(source))
    module.model.eval()
    with torch.no_grad():
        return write_shards(samples(), out, samples_per_shard, meta=meta)


def trajectories_command(cfg) -> None:
    start = time.perf_counter()
    index = export_trajectories(cfg.teacher, cfg.source, cfg.out, cfg.num_videos, cfg.steps, cfg.shift,
                                cfg.guidance_scale, cfg.snapshot_steps, cfg.batch_size, cfg.seed, cfg.samples_per_shard)
    Console().print(f"[green]Wrote {index['total']} trajectories to {cfg.out} in {time.perf_counter() - start:.0f} s")
