"""The causal student: the same diffusers Wan, made block-causal through attention processors.

Three execution paths that agree (tests check it to 1e-5 in float32):
  * ``forward``: one full-sequence pass with the block-causal token mask (training);
  * ``forward_teacher_forcing``: [clean | noisy] in one pass, noisy block j seeing clean blocks < j
    (Causal-Forcing stages; also the brute-force reference for the cache);
  * ``forward_cached``: one block at a time over a ``KVCache`` (roll-outs and inference).
Every path takes per-frame σ (B, F) and uses absolute temporal RoPE positions. The full-sequence paths attend
through a dense token mask on the CPU and a block-sparse one (flex attention) on a GPU (``attention``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint
from torch import nn

from oneforcing.models.block_layout import (
    BlockLayout,
    expand_to_tokens,
    frame_visibility,
    teacher_forcing_visibility,
)
from oneforcing.models.block_sparse import block_sparse_mask, resolve_backend
from oneforcing.models.causal_attention import (
    AttentionControl,
    CachedCrossAttnProcessor,
    CausalSelfAttnProcessor,
    FramePositionRope,
    KVCache,
)
from oneforcing.models.compute_dtype import autocast_dtype
from oneforcing.models.wan import WanBackbone, WanConfig


class CausalWanBackbone(WanBackbone):
    """Block-causal Wan velocity predictor.

    Args:
        config: Wan hyper-parameters (same shapes as the bidirectional teacher, whose weights load as-is).
        block_size: latent frames per block (1 framewise, 3 chunkwise).
        first_block_size: size of the first block when it differs (first-frame enhancement, e.g. 4).
        window_frames: rolling attention window in frames (None: attend to everything generated so far).
        sink_frames: first frames that never leave the window.
        attention: how the full-sequence paths apply the block-causal mask: "dense" (an (S, S) token mask with
            SDPA), "block_sparse" (flex attention's ``BlockMask``: no S × S tensor, tiles outside the mask skipped)
            or "auto" (dense on the CPU, where flex attention has no backward; block-sparse on a GPU).
    """

    def __init__(self, config: WanConfig, block_size: int = 1, first_block_size: int | None = None,
                 window_frames: int | None = None, sink_frames: int = 0, attention: str = "auto") -> None:
        super().__init__(config)
        resolve_backend(attention, torch.device("cpu"))  # an unknown name fails here, not at the first forward
        largest_block = max(block_size, first_block_size or block_size)
        if window_frames is not None and window_frames < largest_block + sink_frames:
            raise ValueError(f"window_frames={window_frames} is smaller than a block ({largest_block} frames) plus "
                             f"{sink_frames} sink frames; use a window of at least {largest_block + sink_frames}.")
        if sink_frames < 0 or (sink_frames and window_frames is None):
            raise ValueError(f"sink_frames={sink_frames} needs a rolling window (window_frames) and must be >= 0.")
        self.block_size, self.first_block_size = block_size, first_block_size
        self.window_frames, self.sink_frames, self.attention = window_frames, sink_frames, attention
        self.control = AttentionControl()
        for i, block in enumerate(self.transformer.blocks):
            block.attn1.set_processor(CausalSelfAttnProcessor(self.control, i))
            block.attn2.set_processor(CachedCrossAttnProcessor(self.control, i))
        self.transformer.rope = FramePositionRope(self.transformer.rope, self.control)
        self._masks: dict[tuple, torch.Tensor] = {}  # keyed by everything the mask depends on

    # --- layout and masks -----------------------------------------------------------------------------
    @staticmethod
    def layout_for(num_frames: int, block_size: int, first_block_size: int | None) -> BlockLayout:
        return BlockLayout(num_frames, block_size, first_block_size)

    def layout(self, num_frames: int) -> BlockLayout:
        return self.layout_for(num_frames, self.block_size, self.first_block_size)

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, p_h, p_w = self.config.patch_size
        return (height // p_h) * (width // p_w)

    def _token_mask(self, kind: str, num_frames: int, tokens_per_frame: int, device: torch.device):
        """The (S, S) dense mask or its ``BlockMask``, built once per key and reused."""
        backend = resolve_backend(self.attention, device)
        key = (kind, backend, num_frames, tokens_per_frame, self.block_size, self.first_block_size,
               self.window_frames, self.sink_frames, str(device))
        if key not in self._masks:
            layout = self.layout(num_frames)
            visibility = (teacher_forcing_visibility if kind == "teacher_forcing" else frame_visibility)(
                layout, self.window_frames, self.sink_frames)  # (F, F) or (2F, 2F) over frames
            if backend == "block_sparse":
                self._masks[key] = block_sparse_mask(visibility, tokens_per_frame, device)
            else:
                self._masks[key] = expand_to_tokens(visibility, tokens_per_frame).to(device)
        return self._masks[key]

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, **control) -> torch.Tensor:
        for name, value in control.items():
            setattr(self.control, name, value)
        try:
            return super().forward(x, sigma, context)
        finally:
            self.control.clear()

    def _checkpointed_block(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """A block's checkpoint that recomputes under the attention control of its forward: the processors read
        the per-call ``control``, which the backbone clears after the call (a recompute in backward would otherwise
        attend without the causal mask). A cached call (the roll-out's grad-enabled calls) recomputes over the
        cache's slots before its own, which later calls leave as they were (they append after it or rewrite its
        own slots), and writes nothing; a rolling-window eviction in between is an error at the recompute.
        With ``cache_gradient`` (K/V kept for later blocks' gradient) a cached call is not checkpointed: its K/V
        leave the block, and later blocks' backward would need them."""
        control = self.control
        cache = control.cache
        if cache is not None and cache.keep_gradient:
            return block(*args)
        mask, positions = control.mask, control.frame_positions
        replay = None if cache is None else (*cache.current, cache.evictions)

        @contextlib.contextmanager
        def as_in_forward():
            saved = control.mask, control.frame_positions, control.cache, control.replay
            control.mask, control.frame_positions, control.cache, control.replay = mask, positions, cache, replay
            try:
                yield
            finally:
                control.mask, control.frame_positions, control.cache, control.replay = saved

        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False,
                                                 context_fn=lambda: (contextlib.nullcontext(), as_in_forward()))

    @staticmethod
    def _per_frame(sigma: torch.Tensor, num_frames: int) -> torch.Tensor:
        return sigma[:, None].expand(-1, num_frames) if sigma.ndim == 1 else sigma

    # --- the three paths ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Full-sequence block-causal pass. x: (B, F, C, H, W); σ: (B,) or (B, F) -> velocity like x."""
        F, H, W = x.shape[1], x.shape[3], x.shape[4]
        mask = self._token_mask("causal", F, self.tokens_per_frame(H, W), x.device)
        return self._run(x, self._per_frame(sigma, F), context, mask=mask)

    def forward_teacher_forcing(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                                clean: torch.Tensor, clean_sigma: float = 0.0) -> torch.Tensor:
        """Noisy frames x (B, F, ...) at σ (B, F), each block conditioned on the clean frames of earlier blocks.

        Clean and noisy halves share temporal positions 0..F-1; the clean half is at ``clean_sigma``.
        Returns the velocity of the noisy half only.
        """
        B, F, _, H, W = x.shape
        sigma = self._per_frame(sigma, F)
        both = torch.cat([clean, x], dim=1)  # (B, 2F, C, H, W)
        sigmas = torch.cat([torch.full_like(sigma, clean_sigma), sigma], dim=1)
        mask = self._token_mask("teacher_forcing", F, self.tokens_per_frame(H, W), x.device)
        positions = torch.arange(F).repeat(2)
        return self._run(both, sigmas, context, mask=mask, frame_positions=positions)[:, F:]

    def forward_cached(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, cache: KVCache,
                       frame_offset: int) -> torch.Tensor:
        """One block x (B, n, C, H, W) at absolute frames [offset, offset+n) over the cache -> velocity."""
        n = x.shape[1]
        cache.check_inputs(x.shape[0], context)
        cache.begin_call(frame_offset, n)
        positions = torch.arange(frame_offset, frame_offset + n)
        return self._run(x, self._per_frame(sigma, n), context, cache=cache, frame_positions=positions)

    def new_cache(self, batch_size: int, height: int, width: int, num_frames: int,
                  dtype: torch.dtype | None = None, device: torch.device | None = None,
                  keep_gradient: bool = False) -> KVCache:
        """A cache for a roll-out of ``num_frames`` (or the rolling window, whichever is smaller), in the dtype the
        blocks compute in: ``dtype``, else autocast's where autocast is on (``autocast_dtype``: bf16-mixed keeps float32
        parameters but computes K and V in bfloat16, so a float32 cache would double its memory and cast every write),
        else the parameters'.

        ``keep_gradient``: the cross-block gradient path of the official roll-out (see ``KVCache``).
        """
        cfg = self.config
        parameter = next(self.parameters())
        dtype = dtype or autocast_dtype(torch.device(device or parameter.device).type)
        capacity = num_frames if self.window_frames is None else min(self.window_frames, num_frames)
        largest_block = max(self.block_size, self.first_block_size or self.block_size)
        return KVCache(
            num_layers=cfg.num_layers, batch_size=batch_size, tokens_per_frame=self.tokens_per_frame(height, width),
            num_heads=cfg.num_attention_heads, head_dim=cfg.attention_head_dim, capacity_frames=capacity,
            sink_frames=self.sink_frames if self.window_frames is not None and self.window_frames < num_frames else 0,
            max_block_frames=min(largest_block, num_frames),
            dtype=dtype or parameter.dtype, device=device or parameter.device, keep_gradient=keep_gradient,
        )
