"""``oneforcing data toy|trajectories|encode|prompts``: data sets as webdataset shards.

``toy`` writes the procedural toy world (train and val splits); ``trajectories`` a teacher's ODE trajectories
(commands/trajectories.py); ``encode`` and ``prompts`` users' videos and prompts (commands/encode.py).
"""

from __future__ import annotations

from typing import Literal

import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from rich.progress import track

from oneforcing.data.shards import write_shards
from oneforcing.toy.shards import iterate_toy_samples
from oneforcing.toy.world import BACKGROUNDS

VAL_SEED_OFFSET = 1_000_003  # the val split is a disjoint stream of the same world


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="oneforcing data", description="Write data sets as webdataset shards.")
    sub = parser.add_subcommands(dest="kind")
    toy = ArgumentParser(description="The built-in procedural text-to-video world.")
    toy.add_argument("--config", action=ActionConfigFile)
    toy.add_argument("--out", "--out_dir", dest="out", type=str, required=True, help="directory for train/ and val/")
    toy.add_argument("--num-videos", "--num_videos", dest="num_videos", type=int, default=2000, help="train videos")
    toy.add_argument("--num-val-videos", "--num_val_videos", dest="num_val_videos", type=int, default=64)
    toy.add_argument("--seed", type=int, default=0, help="same seed, byte-identical shards")
    toy.add_argument("--num-frames", "--num_frames", dest="num_frames", type=int, default=12)
    toy.add_argument("--size", type=int, default=32, help="frame height and width in pixels")
    toy.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int, default=500)
    toy.add_argument("--max-objects", "--max_objects", dest="max_objects", type=int, default=1,
                     help="1 (the default world) or 2 (40 %% of videos with two objects, the earlier world)")
    toy.add_argument("--background", type=Literal["flat", "textured"], default="flat",
                     help="flat (the default world) or textured (the earlier world)")
    toy.add_argument("--speed-scale", "--speed_scale", dest="speed_scale", type=float, default=1.0,
                     help="multiplies the named speeds (1: the default world, 1 and 2.2 px per frame; 4: a world "
                          "variant whose slow objects move one 4-pixel token per frame)")
    toy.add_argument("--wrap", type=bool, default=False,
                     help="true: a world variant on a torus (objects start anywhere and wrap around the sides, so that "
                          "only the caption tells the direction)")
    toy.add_argument("--trail", type=bool, default=False,
                     help="true: a world variant whose objects draw a fading trail of the last frame interval, so "
                          "that one frame shows the direction and speed of motion")
    sub.add_subcommand("toy", toy)
    from oneforcing.commands.encode import add_parsers
    from oneforcing.commands.trajectories import add_parser

    add_parser(sub)
    add_parsers(sub)
    return parser


def write_toy_dataset(out: str | Path, num_videos: int, num_val_videos: int, seed: int, num_frames: int = 12,
                      size: int = 32, samples_per_shard: int = 500, progress: bool = True, max_objects: int = 1,
                      background: str = "flat", speed_scale: float = 1.0, wrap: bool = False,
                      trail: bool = False) -> dict:
    """Write ``out/train`` and ``out/val``; returns both indexes."""
    problems = []
    if num_videos < 1:
        problems.append(f"--num-videos={num_videos} must be >= 1")
    if num_val_videos < 0:
        problems.append(f"--num-val-videos={num_val_videos} must be >= 0")
    if size < 16 or size % 4:
        problems.append(f"--size={size} must be a multiple of 4 and >= 16")
    if num_frames < 1:
        problems.append(f"--num-frames={num_frames} must be >= 1")
    if max_objects not in (1, 2):
        problems.append(f"--max-objects={max_objects} must be 1 or 2")
    if background not in BACKGROUNDS:
        problems.append(f"--background={background!r} must be one of {list(BACKGROUNDS)}")
    if speed_scale <= 0:
        problems.append(f"--speed-scale={speed_scale} must be > 0")
    if problems:
        raise ValueError("Invalid toy data arguments: " + "; ".join(problems))
    result = {}
    for split, count, split_seed in (("train", num_videos, seed), ("val", num_val_videos, seed + VAL_SEED_OFFSET)):
        if count == 0:
            continue
        samples = iterate_toy_samples(split_seed, count, num_frames, size, max_objects, background, speed_scale, wrap,
                                      trail)
        if progress:
            samples = track(samples, total=count, description=f"toy {split}")
        meta = dict(world="toy", seed=split_seed, num_frames=num_frames, size=size, max_objects=max_objects,
                    background=background)
        if speed_scale != 1.0:
            meta["speed_scale"] = speed_scale
        if wrap:
            meta["wrap"] = True
        if trail:
            meta["trail"] = True
        result[split] = write_shards(samples, Path(out) / split, samples_per_shard, meta=meta)
    return result


def data_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    if cfg.kind in ("encode", "prompts"):
        from oneforcing.commands.encode import encode_command, prompts_command

        encode_command(cfg.encode) if cfg.kind == "encode" else prompts_command(cfg.prompts)
    elif cfg.kind == "trajectories":
        from oneforcing.commands.trajectories import trajectories_command

        trajectories_command(cfg.trajectories)
    elif cfg.kind == "toy":
        c = cfg.toy
        start = time.perf_counter()
        indexes = write_toy_dataset(c.out, c.num_videos, c.num_val_videos, c.seed, c.num_frames, c.size,
                                    c.samples_per_shard, max_objects=c.max_objects, background=c.background,
                                    speed_scale=c.speed_scale, wrap=c.wrap, trail=c.trail)
        counts = ", ".join(f"{k}: {v['total']} videos in {len(v['shards'])} shards" for k, v in indexes.items())
        Console().print(f"[green]Wrote {counts} to {c.out} in {time.perf_counter() - start:.1f} s")
