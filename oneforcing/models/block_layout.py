"""How a video's latent frames are grouped into generation blocks, and the attention masks that follow.

Framewise: blocks of 1 frame; chunkwise: blocks of 3; first-frame enhancement: a first block of its own
size (e.g. 4, then 1-frame blocks). Within a block attention is bidirectional, across blocks causal
(docs/algorithms.md §3). A rolling window of W frames keeps ``sink`` first frames plus the most recent
W - sink frames, evicting at block boundaries exactly as the KV cache does, so that the masked full-sequence
forward and the cached block-by-block forward see the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of ``block_size`` frames after an optional first block of ``first_block_size`` frames."""

    num_frames: int
    block_size: int
    first_block_size: int | None = None

    def __post_init__(self) -> None:
        first = self.first_block_size or self.block_size
        problems = []
        if self.block_size < 1 or first < 1 or self.num_frames < 1:
            problems.append(f"sizes must be >= 1 (num_frames={self.num_frames}, block_size={self.block_size}, "
                            f"first_block_size={self.first_block_size})")
        elif first > self.num_frames or (self.num_frames - first) % self.block_size:
            problems.append(
                f"{self.num_frames} latent frames do not split into a first block of {first} and blocks of "
                f"{self.block_size}; choose num_frames = {first} + k·{self.block_size} (e.g. "
                f"{first + self.block_size * max(1, (self.num_frames - first) // self.block_size)}) or another block size"
            )
        if problems:
            raise ValueError("Invalid block layout: " + "; ".join(problems))

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """(start frame, number of frames) per block."""
        first = self.first_block_size or self.block_size
        out = [(0, first)]
        while out[-1][0] + out[-1][1] < self.num_frames:
            start = out[-1][0] + out[-1][1]
            out.append((start, self.block_size))
        return out

    def block_end_per_frame(self) -> torch.Tensor:
        """(F,) index one past the end of each frame's block."""
        ends = torch.empty(self.num_frames, dtype=torch.long)
        for start, size in self.blocks:
            ends[start:start + size] = start + size
        return ends


def frame_visibility(layout: BlockLayout, window_frames: int | None = None, sink_frames: int = 0) -> torch.Tensor:
    """(F_q, F_k) bool: may a query frame attend to a key frame (block-causal, optionally windowed)."""
    ends = layout.block_end_per_frame()
    k = torch.arange(layout.num_frames)
    visible = k[None, :] < ends[:, None]  # keys up to the end of the query's block
    if window_frames is not None:
        recent = k[None, :] >= ends[:, None] - (window_frames - sink_frames)
        visible &= recent | (k[None, :] < sink_frames)
    return visible


def teacher_forcing_visibility(layout: BlockLayout, window_frames: int | None = None,
                               sink_frames: int = 0) -> torch.Tensor:
    """(2F, 2F) bool over [clean frames | noisy frames] (docs/algorithms.md §3, teacher forcing).

    Clean frames attend block-causally among themselves; the noisy frames of block j attend to the noisy
    frames of block j and to the clean frames of earlier blocks (within the window).
    """
    F = layout.num_frames
    causal = frame_visibility(layout, window_frames, sink_frames)
    block_of = torch.empty(F, dtype=torch.long)
    for b, (start, size) in enumerate(layout.blocks):
        block_of[start:start + size] = b
    same_block = block_of[:, None] == block_of[None, :]
    out = torch.zeros(2 * F, 2 * F, dtype=torch.bool)
    out[:F, :F] = causal
    out[F:, :F] = causal & ~same_block  # earlier blocks' clean frames
    out[F:, F:] = same_block            # its own noisy block
    return out


def expand_to_tokens(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """(Fq, Fk) -> (Fq·T, Fk·T) token mask, frame-major token order as in Wan's patchify."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
