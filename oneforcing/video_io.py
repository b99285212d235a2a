"""Video files and TensorBoard GIF summaries from pixel tensors (F, 3, H, W) in [-1, 1]."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def video_grid(videos: torch.Tensor, columns: int | None = None, pad: int = 1) -> torch.Tensor:
    """(N, F, 3, H, W) -> one video (F, 3, rows·(H+pad), cols·(W+pad)) tiling the N videos."""
    N, F, C, H, W = videos.shape
    columns = columns or N
    rows = -(-N // columns)
    grid = torch.full((F, C, rows * (H + pad), columns * (W + pad)), 1.0, dtype=videos.dtype)
    for n in range(N):
        r, c = divmod(n, columns)
        grid[:, :, r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = videos[n].cpu()
    return grid


def gif_bytes(video: torch.Tensor, fps: int = 8, scale: int = 4) -> bytes:
    """Encode (F, 3, H, W) as an animated GIF, upscaled ``scale``× with nearest neighbour."""
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
              for f in to_uint8_frames(video)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_video(path: str | Path, video: torch.Tensor, fps: int = 8, scale: int = 4) -> Path:
    """Write (F, 3, H, W) to ``path``; the format follows the suffix (.gif or .mp4)."""
    path = Path(path)
    if path.suffix == ".gif":
        atomic_write_bytes(path, gif_bytes(video, fps=fps, scale=scale))
    elif path.suffix == ".mp4":
        import imageio.v3 as iio

        frames = np.stack([np.asarray(Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST))
                           for f in to_uint8_frames(video)])
        data = iio.imwrite("<bytes>", frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
        atomic_write_bytes(path, data)
    else:
        raise ValueError(f"Unsupported video suffix {path.suffix!r} for {path}; use .gif or .mp4.")
    return path


def log_gif_to_tensorboard(experiment, tag: str, video: torch.Tensor, step: int, fps: int = 8) -> None:
    """Add an animated-GIF image summary (TensorBoard shows it animated; needs no moviepy)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    F, C, H, W = video.shape
    image = Summary.Image(height=H * 4, width=W * 4, colorspace=3, encoded_image_string=gif_bytes(video, fps=fps))
    experiment.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), global_step=step)
