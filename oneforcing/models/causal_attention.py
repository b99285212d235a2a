"""Block-causal attention for diffusers' Wan through its attention-processor interface (no fork).

One ``AttentionControl`` object is shared by every processor of a backbone; the backbone fills it before
each call: a token mask for the full-sequence paths, or a ``KVCache`` and the block's frame offset for
block-by-block generation. ``FramePositionRope`` replaces Wan's rotary module so that temporal positions
are absolute (a block at frame s gets positions s..s+n-1) and teacher forcing can give the clean and noisy
halves identical positions (docs/algorithms.md §3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from oneforcing.models.block_sparse import block_sparse_attention


class AttentionControl:
    """Per-call instructions for the processors (set by the backbone, cleared after the call)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | BlockMask | None = None  # (S, S) bool, True = may attend; or its block-sparse form
        self.cache: KVCache | None = None
        self.frame_positions: torch.Tensor | None = None  # (F,) temporal RoPE positions of this call's frames
        # set while activation checkpointing recomputes a cached call in backward: that call's token slots [lo, hi)
        # and the cache's eviction count then; the recompute reads slots [0, lo) and writes nothing
        self.replay: tuple[int, int, int] | None = None

    def clear(self) -> None:
        self.mask, self.cache, self.frame_positions, self.replay = None, None, None, None


class KVCache:
    """Self-attention K/V of the frames generated so far, plus the cross-attention K/V of the prompt.

    Buffers (allocated once, written in place, never part of autograd: the cache is detached between blocks):
    ``k``, ``v``: (layers, B, capacity·T, heads, head_dim), T = tokens per frame. ``frames`` lists the
    absolute frame index held by each slot. Keys are stored already rotated (absolute positions).

    ``keep_gradient`` (the official roll-out's behaviour, docs/algorithms.md §4): the K/V of every
    grad-enabled call are remembered per block, and a later grad-enabled call reads each remembered block's
    slots as ``buffer + (k - sg(k))``: the values are the buffer's (the context pass's), the gradient flows
    straight through to that block's exit-step K/V projections. A block partly evicted by a rolling window
    loses this path.

    Call protocol, once per forward at frame offset s with n frames:
      * s == next frame: the block is appended; with a rolling window the oldest non-sink frames are evicted
        first (sink frames, the first ``sink_frames`` ever written, are kept);
      * (s, n) == the last block: its slots are overwritten (the next denoising step, or the context pass on
        the clean block: the last writer wins).
    Anything else is an error, as is a different batch size or prompt than the cache was built for.
    """

    def __init__(self, num_layers: int, batch_size: int, tokens_per_frame: int, num_heads: int, head_dim: int,
                 capacity_frames: int, sink_frames: int = 0, max_block_frames: int = 1,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 keep_gradient: bool = False) -> None:
        if capacity_frames < max_block_frames + sink_frames:
            raise ValueError(
                f"A KV cache of {capacity_frames} frames cannot hold {sink_frames} sink frames plus a block of "
                f"{max_block_frames}; make the window at least {max_block_frames + sink_frames} frames."
            )
        self.batch_size, self.tokens_per_frame = batch_size, tokens_per_frame
        self.capacity_frames, self.sink_frames = capacity_frames, sink_frames
        shape = (num_layers, batch_size, capacity_frames * tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.keep_gradient = keep_gradient
        self.grad_kv: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in range(num_layers)]
        self.reset()

    def reset(self) -> None:
        """Forget every frame and the prompt (a new roll-out)."""
        self.frames: list[int] = []
        self.evictions = 0  # rolling-window evictions so far (they move slots a checkpointed call's recompute reads)
        self.next_frame = 0
        self.last_block: tuple[int, int] | None = None
        self.current: tuple[int, int] = (0, 0)  # token slots [lo, hi) of this call's frames
        self.context: torch.Tensor | None = None
        self.cross = [None] * len(self.cross)
        self.grad_kv = [{} for _ in self.grad_kv]

    def check_inputs(self, batch_size: int, context: torch.Tensor) -> None:
        if batch_size != self.batch_size:
            raise ValueError(f"This KV cache was built for batch size {self.batch_size}, got {batch_size}; "
                             "create a new cache (or reset()) for a different batch.")
        if self.context is None:
            self.context = context
        elif context is not self.context and (context.shape != self.context.shape or not torch.equal(context, self.context)):
            raise ValueError("This KV cache holds another prompt's cross-attention; call cache.reset() or create a "
                             "new cache before generating for a different prompt.")

    def begin_call(self, frame_offset: int, num_frames: int) -> None:
        """Place this call's frames in the buffer (append with eviction, or rewrite the last block)."""
        T = self.tokens_per_frame
        if frame_offset == self.next_frame:
            overflow = len(self.frames) + num_frames - self.capacity_frames
            if overflow > 0:
                keep_from = self.sink_frames + overflow
                src = slice(keep_from * T, len(self.frames) * T)
                dst = slice(self.sink_frames * T, (len(self.frames) - overflow) * T)
                self.k[:, :, dst] = self.k[:, :, src].clone()
                self.v[:, :, dst] = self.v[:, :, src].clone()
                self.frames = self.frames[: self.sink_frames] + self.frames[keep_from:]
                self.evictions += 1
            lo = len(self.frames)
            self.frames += list(range(frame_offset, frame_offset + num_frames))
            self.next_frame = frame_offset + num_frames
            self.last_block = (frame_offset, num_frames)
        elif self.last_block == (frame_offset, num_frames):
            lo = len(self.frames) - num_frames
        else:
            raise ValueError(
                f"KV cache call at frames [{frame_offset}, {frame_offset + num_frames}) neither appends the next block "
                f"(starting at frame {self.next_frame}) nor rewrites the last one {self.last_block}; generate blocks in order."
            )
        self.current = (lo * T, len(self.frames) * T)

    def forget_prompt(self) -> None:
        """Drop the prompt and its cross-attention K/V, keeping the frames' self-attention K/V: the next call may
        bring another prompt (a prompt switch without re-encoding the frames)."""
        self.context = None
        self.cross = [None] * len(self.cross)

    def skip_to(self, frame: int) -> None:
        """Append the next block at absolute frame ``frame`` instead of ``next_frame``: re-encoding held frames
        whose positions have a gap (the sink frames, then the window's recent frames)."""
        if frame < self.next_frame:
            raise ValueError(f"Cannot skip back to frame {frame}: the cache already holds frames up to "
                             f"{self.next_frame - 1}; reset() to re-encode from the start.")
        self.next_frame, self.last_block = frame, None

    @property
    def num_cached_frames(self) -> int:
        return len(self.frames)

    def remember(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep this call's grad-carrying K/V (B, n·T, H, D) for later calls (``keep_gradient`` only)."""
        if self.keep_gradient:
            self.grad_kv[layer][self.last_block[0]] = (k, v)

    def history(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of slots [0, end) (the frames before this call), with the straight-through path when kept."""
        k, v = self.k[layer, :, :end], self.v[layer, :, :end]
        if not self.grad_kv[layer]:
            return k, v
        T = self.tokens_per_frame
        k_parts, v_parts, pos = [], [], 0
        for start, (gk, gv) in sorted(self.grad_kv[layer].items()):
            n = gk.shape[1] // T
            if self.frames.count(start) == 0:
                continue  # evicted
            slot = self.frames.index(start)
            lo, hi = slot * T, (slot + n) * T
            if hi > end or self.frames[slot:slot + n] != list(range(start, start + n)):
                continue  # this call's own block, or partly evicted
            k_parts += [k[:, pos:lo], k[:, lo:hi] + (gk - gk.detach())]
            v_parts += [v[:, pos:lo], v[:, lo:hi] + (gv - gv.detach())]
            pos = hi
        k_parts.append(k[:, pos:])
        v_parts.append(v[:, pos:])
        return torch.cat(k_parts, dim=1), torch.cat(v_parts, dim=1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, S, H, D) by Wan's (1, S, 1, D) tables (real form of x·e^{iθ})."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1))  # (B, S, H·D) -> (B, S, H, D)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | BlockMask | None) -> torch.Tensor:
    """SDPA (dense or no mask) or flex attention (a ``BlockMask``) over (B, S, H, D) tensors; returns (B, S_q, H·D).
    Cached keys and values are read in the queries' dtype (the cache keeps the latents' dtype; FSDP2's bf16
    compute makes the queries bf16)."""
    q, k, v = q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2)  # (B, H, S, D)
    if isinstance(mask, BlockMask):
        out = block_sparse_attention(q, k, v, mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class CausalSelfAttnProcessor:
    """Wan self-attention with a token mask (full-sequence paths) or a KV cache (block-by-block path)."""

    def __init__(self, control: AttentionControl, layer: int) -> None:
        self.control, self.layer = control, layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = _split_heads(attn.norm_q(attn.to_q(hidden_states)), attn.heads)
        k = _split_heads(attn.norm_k(attn.to_k(hidden_states)), attn.heads)
        v = _split_heads(attn.to_v(hidden_states), attn.heads)
        if rotary_emb is not None:
            q, k = apply_rotary(q, *rotary_emb), apply_rotary(k, *rotary_emb)
        cache, replay = self.control.cache, self.control.replay
        if cache is None:
            out = _attend(q, k, v, self.control.mask)
        elif replay is not None:  # activation checkpointing's recompute of a cached call: its forward's history
            lo, _, evictions = replay
            if cache.evictions != evictions:
                raise RuntimeError("Activation checkpointing recomputes a KV-cached call after the rolling window "
                                   "evicted frames it attended to; train with a window of at least the roll-out's "
                                   "frames, or without activation checkpointing of the generator.")
            keys = torch.cat([cache.k[self.layer, :, :lo], k], dim=1)
            values = torch.cat([cache.v[self.layer, :, :lo], v], dim=1)
            out = _attend(q, keys, values, None)
        else:
            lo, hi = cache.current  # this call's frames are the last slots of the buffer
            cache.k[self.layer, :, lo:hi] = k.detach()
            cache.v[self.layer, :, lo:hi] = v.detach()
            if k.requires_grad:  # gradient reaches this block's own K/V (and, kept, earlier blocks' exit-step K/V)
                past_k, past_v = cache.history(self.layer, lo)
                keys, values = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
                cache.remember(self.layer, k, v)
            else:
                keys, values = cache.k[self.layer, :, :hi], cache.v[self.layer, :, :hi]
            out = _attend(q, keys, values, None)
        return attn.to_out[1](attn.to_out[0](out))


class CachedCrossAttnProcessor:
    """Wan text cross-attention whose K/V are computed once per prompt when running without gradient.

    With gradient enabled the K/V are recomputed (they depend on trainable projections), as in the reference.
    """

    def __init__(self, control: AttentionControl, layer: int) -> None:
        self.control, self.layer = control, layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, attention_mask=None,
                 rotary_emb=None) -> torch.Tensor:
        if attn.add_k_proj is not None:
            raise NotImplementedError("Image-conditioned (I2V) Wan cross-attention is not supported by the causal processors.")
        q = _split_heads(attn.norm_q(attn.to_q(hidden_states)), attn.heads)
        cache = self.control.cache
        use_cache = cache is not None and not torch.is_grad_enabled()
        if use_cache and cache.cross[self.layer] is not None:
            k, v = cache.cross[self.layer]
        else:
            k = _split_heads(attn.norm_k(attn.to_k(encoder_hidden_states)), attn.heads)
            v = _split_heads(attn.to_v(encoder_hidden_states), attn.heads)
            if use_cache:
                cache.cross[self.layer] = (k, v)
        return attn.to_out[1](attn.to_out[0](_attend(q, k, v, None)))


class FramePositionRope(nn.Module):
    """Wan's 3-axis RoPE with explicit temporal positions (absolute frame indices)."""

    def __init__(self, rope: nn.Module, control: AttentionControl) -> None:
        super().__init__()
        self.inner = rope  # holds the non-persistent frequency tables; state dicts are unchanged
        self.control = control

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, num_frames, height, width = hidden_states.shape  # diffusers layout (B, C, F, H, W)
        p_t, p_h, p_w = self.inner.patch_size
        f, h, w = num_frames // p_t, height // p_h, width // p_w
        positions = self.control.frame_positions
        if positions is None:
            positions = torch.arange(f)
        if int(positions.max()) >= self.inner.max_seq_len:
            raise ValueError(f"Frame position {int(positions.max())} exceeds the RoPE table ({self.inner.max_seq_len}); "
                             "raise rope_max_seq_len or generate fewer frames.")
        positions = positions.to(self.inner.freqs_cos.device)
        sizes = [self.inner.t_dim, self.inner.h_dim, self.inner.w_dim]
        tables = []
        for freqs in (self.inner.freqs_cos, self.inner.freqs_sin):
            t_tab, h_tab, w_tab = freqs.split(sizes, dim=1)
            tables.append(torch.cat([
                t_tab[positions].view(f, 1, 1, -1).expand(f, h, w, -1),
                h_tab[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                w_tab[:w].view(1, 1, w, -1).expand(f, h, w, -1),
            ], dim=-1).reshape(1, f * h * w, 1, -1))
        return tables[0], tables[1]
