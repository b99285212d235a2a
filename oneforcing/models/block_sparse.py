"""Block-sparse attention for the full-sequence paths: flex attention over a ``BlockMask`` built from frames.

A dense token mask at Wan's length (21 latent frames × 1 560 tokens = 32 760; twice that with teacher forcing's
clean half) is an (S, S) tensor of 1.1–4.3 GB, and a masked SDPA cannot use the flash kernel. The block-causal
masks are constant per frame pair, so the tiles of a ``BlockMask`` (128 × 128 tokens) follow from the frame
visibility alone: a tile is *full* when every frame pair it covers is visible, *partial* when some are (flex
attention then evaluates ``mask_mod`` inside it), and skipped otherwise. Built from 2-D prefix sums over the
(F_q, F_k) frame table, the mask never materialises anything of size S × S: its indices are O((S / 128)²).

Flex attention has no backward on the CPU, so the CPU keeps the dense mask with SDPA (the reference the tests
compare against); a GPU compiles ``flex_attention`` once per process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

TILE = 128  # flex attention's default tile (tokens per side)
ATTENTION_BACKENDS = ("auto", "dense", "block_sparse")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: dense SDPA on the CPU (flex attention cannot run backward there), block-sparse elsewhere (a GPU,
    or the meta device on which ``oneforcing plan`` traces the GPU's step)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention={backend!r} is not a backend; use one of {ATTENTION_BACKENDS}.")
    if backend == "auto":
        return "dense" if device.type == "cpu" else "block_sparse"
    return backend


def _rectangle_sums(visibility: torch.Tensor, q_first: torch.Tensor, q_last: torch.Tensor, k_first: torch.Tensor,
                    k_last: torch.Tensor) -> torch.Tensor:
    """Visible frame pairs in each rectangle [q_first, q_last] × [k_first, k_last] (inclusive), by prefix sums."""
    prefix = F.pad(visibility.long().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (F_q + 1, F_k + 1)
    a0, a1 = q_first[:, None], q_last[:, None] + 1
    b0, b1 = k_first[None, :], k_last[None, :] + 1
    return prefix[a1, b1] - prefix[a0, b1] - prefix[a1, b0] + prefix[a0, b0]


def _tile_frames(length: int, tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First and last frame covered by each tile of ``TILE`` tokens, and whether the tile is whole (the last one
    is cut by the sequence's end)."""
    starts = torch.arange(math.ceil(length / TILE)) * TILE
    ends = torch.clamp(starts + TILE, max=length) - 1
    return starts // tokens_per_frame, ends // tokens_per_frame, ends - starts + 1 == TILE


def _indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q_tiles, K_tiles) bool -> counts (1, 1, Q_tiles) and indices (1, 1, Q_tiles, K_tiles), selected tiles first."""
    order = torch.sort((~selected).to(torch.int8), dim=1, stable=True).indices
    counts = selected.sum(1)
    return counts.to(torch.int32)[None, None], order.to(torch.int32)[None, None]


def block_sparse_mask(visibility: torch.Tensor, tokens_per_frame: int,
                      device: torch.device | str | None = None) -> BlockMask:
    """The ``BlockMask`` of a (F_q, F_k) frame visibility with ``tokens_per_frame`` tokens per frame, frame-major
    token order (Wan's patchify), as ``expand_to_tokens`` would give densely."""
    T = tokens_per_frame
    frames_q, frames_k = visibility.shape
    q_first, q_last, q_whole = _tile_frames(frames_q * T, T)
    k_first, k_last, k_whole = _tile_frames(frames_k * T, T)
    seen = _rectangle_sums(visibility, q_first, q_last, k_first, k_last)  # (Q_tiles, K_tiles)
    area = (q_last - q_first + 1)[:, None] * (k_last - k_first + 1)[None, :]
    # a cut tile is partial even where all its frames are visible: its padding is masked (as create_block_mask does)
    full = (seen == area) & q_whole[:, None] & k_whole[None, :]
    partial = (seen > 0) & ~full
    table = visibility.to(device)

    def mask_mod(b, h, q_idx, kv_idx):  # token pair -> its frame pair's visibility
        return table[torch.clamp(q_idx // T, max=frames_q - 1), torch.clamp(kv_idx // T, max=frames_k - 1)]

    (partial_counts, partial_indices), (full_counts, full_indices) = _indices(partial), _indices(full)
    return BlockMask.from_kv_blocks(
        partial_counts.to(device), partial_indices.to(device), full_counts.to(device), full_indices.to(device),
        BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(frames_q * T, frames_k * T))


_compiled_flex = None


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask) -> torch.Tensor:
    """Flex attention over (B, H, S, D) tensors. Compiled on a GPU (eager flex attention materialises the scores);
    on the meta device (the memory plan's trace) it is SDPA's fused kernel, which keeps the same tensors."""
    global _compiled_flex
    if q.device.type == "meta":
        return F.scaled_dot_product_attention(q, k, v)
    if q.device.type == "cpu":
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise RuntimeError("attention='block_sparse' cannot train on the CPU: flex attention has no backward "
                               "there. Use attention='auto' (dense on the CPU) or 'dense'.")
        return flex_attention(q, k, v, block_mask=mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=mask)
