"""The toy world's videos as shard samples, for ``oneforcing data toy``."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from oneforcing.data.shards import encode_sample
from oneforcing.toy.world import make_video


def iterate_toy_samples(seed: int, num_videos: int, num_frames: int, size: int, max_objects: int = 1,
                        background: str = "flat", speed_scale: float = 1.0, wrap: bool = False,
                        trail: bool = False) -> Iterator[dict]:
    """Member dicts of the toy world's videos 0..num_videos-1 (deterministic in seed)."""
    for i in range(num_videos):
        video = make_video(seed, i, num_frames=num_frames, size=size, max_objects=max_objects, background=background,
                           speed_scale=speed_scale, wrap=wrap, trail=trail)
        yield encode_sample(f"{i:08d}", {"pixels": torch.from_numpy(video.pixels)}, video.caption, video.attributes)
