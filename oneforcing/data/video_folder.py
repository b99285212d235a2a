"""A folder of users' videos with captions: finding them, and reading one as a clip of the training size.

Captions come from a manifest (``.jsonl`` lines ``{"video": "rel/path.mp4", "caption": "..."}`` or a ``.csv``
with ``video`` and ``caption`` columns; paths relative to the video folder) or, without one, from ``.txt``
sidecars beside the videos (``clip.mp4`` → ``clip.txt``). ``read_clip`` decodes with imageio-ffmpeg (no other
dependency), resamples to the target frame rate by nearest earlier frame (output frame i is the source frame
shown at time i / fps), centre-crops to the target aspect ratio and resizes (bilinear, antialiased). A video
that cannot serve raises ``SkipVideo`` with a reason; callers count and report it, never stop on it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
# reasons a video is skipped (the report groups by them)
MISSING_FILE, NO_CAPTION, UNREADABLE, TOO_SHORT, ASPECT_RATIO = (
    "missing_file", "no_caption", "unreadable", "too_short", "aspect_ratio")


class SkipVideo(Exception):
    """A video that cannot become a training clip: ``reason`` (one of the constants above) and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self):  # crosses the worker-process boundary intact
        return SkipVideo, (self.reason, self.detail)


@dataclass(frozen=True)
class VideoItem:
    """One input: the video's path relative to the folder, and its caption (None: none was found)."""

    video: str
    caption: str | None


@dataclass(frozen=True)
class ClipSpec:
    """The clip every video becomes: frames at ``fps``, ``height`` × ``width``; ``max_crop`` is the largest share
    of the source's width or height the centre crop may cut off (a wider mismatch of aspect ratio is skipped)."""

    num_frames: int
    height: int
    width: int
    fps: float
    max_crop: float = 0.25

    def problems(self) -> list[str]:
        problems = []
        if self.num_frames < 1 or self.height < 1 or self.width < 1 or self.fps <= 0:
            problems.append(f"--num-frames {self.num_frames}, --height {self.height}, --width {self.width} and "
                            f"--fps {self.fps} must be positive")
        if not 0 <= self.max_crop < 1:
            problems.append(f"--max-crop {self.max_crop} must be in [0, 1) (a share of the width or height)")
        return problems


def list_videos(folder: str | Path, captions: str | Path | None = None) -> list[VideoItem]:
    """The inputs, sorted by path: the manifest's entries, or every video under ``folder`` with its sidecar."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Video folder {root} does not exist; pass --videos DIR (a folder of .mp4 files).")
    if captions is not None:
        return sorted(_read_manifest(Path(captions)), key=lambda item: item.video)
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
        sidecar = path.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        items.append(VideoItem(str(path.relative_to(root)), text or None))
    if not items:
        raise ValueError(f"Video folder {root} holds no videos ({', '.join(VIDEO_SUFFIXES)}).")
    return items


def _read_manifest(path: Path) -> list[VideoItem]:
    if not path.is_file():
        raise FileNotFoundError(f"Caption manifest {path} does not exist.")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number} is not JSON ({error}); each line must be "
                                     '{"video": "rel/path.mp4", "caption": "..."}.') from None
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"Caption manifest {path} must be .jsonl or .csv (with 'video' and 'caption' fields).")
    if rows and not all(isinstance(r, dict) and "video" in r for r in rows):
        raise ValueError(f"{path}: every entry needs a 'video' field (and a 'caption').")
    return [VideoItem(str(r["video"]), (str(r.get("caption") or "").strip() or None)) for r in rows]


def crop_box(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop of the source with the target's aspect ratio."""
    (h, w), (th, tw) = source_hw, target_hw
    if w * th > h * tw:  # source wider than the target: cut the sides
        cw = max(1, round(h * tw / th))
        return 0, (w - cw) // 2, h, cw
    ch = max(1, round(w * th / tw))
    return (h - ch) // 2, 0, ch, w


def resize_frames(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, H0, W0, 3) uint8 -> (F, 3, height, width) uint8: centre crop, bilinear antialiased resize, rounded
    (uint8, so that worker processes hand the main process a quarter of the bytes)."""
    top, left, ch, cw = crop_box(frames.shape[1:3], (height, width))
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + ch, left:left + cw])).permute(0, 3, 1, 2)  # (F, 3, h, w)
    x = F.interpolate(x.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1] (the codec's input range)."""
    return pixels.float() / 127.5 - 1.0


def source_indices(num_frames: int, source_fps: float, fps: float) -> list[int]:
    """Source frame of each output frame: the one on screen at time i / fps."""
    return [math.floor(i * source_fps / fps + 1e-6) for i in range(num_frames)]


def read_clip(path: str | Path, spec: ClipSpec) -> torch.Tensor:
    """The first ``spec.num_frames`` frames at ``spec.fps`` of ``path`` as (F, 3, H, W) uint8.

    Raises ``SkipVideo`` for a missing or unreadable file, a video too short for the clip, or an aspect ratio
    the centre crop would have to cut by more than ``spec.max_crop``."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise SkipVideo(MISSING_FILE, f"{path} does not exist")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as error:
        raise SkipVideo(UNREADABLE, f"ffmpeg cannot read it ({str(error).splitlines()[0]})") from None
    try:
        width, height = meta["size"]
        source_fps = float(meta.get("fps") or 0)
        if not source_fps > 0 or not width or not height:
            raise SkipVideo(UNREADABLE, f"no frame rate or frame size in its metadata ({meta.get('fps')}, {meta['size']})")
        _, _, ch, cw = crop_box((height, width), (spec.height, spec.width))
        cut = max(1 - ch / height, 1 - cw / width)
        if cut > spec.max_crop + 1e-9:
            raise SkipVideo(ASPECT_RATIO, f"{width}x{height} would lose {cut:.0%} to the centre crop to "
                                          f"{spec.width}x{spec.height} (--max-crop {spec.max_crop})")
        wanted = source_indices(spec.num_frames, source_fps, spec.fps)
        frames, kept, index = [], set(wanted), 0
        try:
            for raw in reader:
                if index in kept:
                    frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
                    frames.extend([frame] * wanted.count(index))  # a source slower than fps repeats frames
                index += 1
                if index > wanted[-1]:
                    break
        except (OSError, RuntimeError, ValueError) as error:
            raise SkipVideo(UNREADABLE, f"decoding failed at frame {index} ({str(error).splitlines()[0]})") from None
        if len(frames) < spec.num_frames:
            raise SkipVideo(TOO_SHORT, f"{index} frames at {source_fps:g} fps; the clip needs {spec.num_frames} frames "
                                       f"at {spec.fps:g} fps ({wanted[-1] + 1} source frames)")
    finally:
        reader.close()
    return resize_frames(np.stack(frames), spec.height, spec.width)
