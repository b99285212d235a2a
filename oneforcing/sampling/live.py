"""An endless video stream of a causal student, block by block, whose prompt can change between blocks.

Blocks are made as the streaming sampler makes them (``StreamingSampler.generate_block``), over the KV cache of the
generator's rolling window: memory stays flat however long the stream runs. A new prompt takes effect at the next
block; the frames already made stay, and the window's self-attention K/V are either re-encoded under the new
prompt (``recache=True``, LongLive's re-caching: the held frames' context passes run again, now attending to the
new prompt) or kept as they were computed under the old one (``recache=False``: only the cross-attention changes).
When the next block would pass the end of the RoPE table, the held frames are re-encoded at positions 0, 1, …
(the recent frames keep their offsets to each other; the sink frames move up to them).
"""

from __future__ import annotations

import torch

from oneforcing.sampling.streaming import GeneratedBlock, StreamingSampler, per_prompt_generators


class LiveStream:
    """One endless stream (batch 1).

    Args:
        sampler: the student's streaming sampler; its generator must have a rolling window (``window_frames``).
        context: (1, L, D) the first prompt's embedding.
        latent_shape: (C, H, W) of a latent frame.
        seed: the stream's noise (the same seed gives the same frames, switches or not, up to a switch).
        recache: on a prompt switch, re-encode the held frames under the new prompt (True) or keep their K/V.
    """

    def __init__(self, sampler: StreamingSampler, context: torch.Tensor, latent_shape: tuple[int, int, int],
                 seed: int = 0, recache: bool = True) -> None:
        model = sampler.model
        if model.window_frames is None:
            raise ValueError("An endless stream needs a rolling attention window, so that memory stays flat: build "
                             "the generator with window_frames (e.g. the training length; `oneforcing serve "
                             "--window N`).")
        if context.dim() != 3 or context.shape[0] != 1:
            raise ValueError(f"A live stream takes one prompt: context must be (1, L, D), got {tuple(context.shape)}.")
        self.sampler, self.model, self.recache = sampler, model, recache
        self.context, self.pending = context, None
        self.latent_shape = tuple(latent_shape)
        self.generators = per_prompt_generators(seed, 1)
        self.max_position = model.transformer.rope.inner.max_seq_len  # frames the RoPE table can place
        _, H, W = self.latent_shape
        self.cache = model.new_cache(1, H, W, self.max_position, device=context.device)
        self.held: list[tuple[int, torch.Tensor]] = []  # (position, clean latents (1, n, C, H, W)) in the cache
        self.frames_made = 0  # the stream's clock: frames made so far
        self.position = 0  # RoPE position of the next block
        self.blocks_made = 0

    def switch_prompt(self, context: torch.Tensor) -> None:
        """Make the blocks from the next one on follow ``context`` (1, L, D)."""
        if tuple(context.shape) != tuple(self.context.shape):
            raise ValueError(f"The new prompt's context {tuple(context.shape)} must have the stream's shape "
                             f"{tuple(self.context.shape)}.")
        self.pending = context.to(self.context.device)

    @torch.no_grad()
    def next_block(self) -> GeneratedBlock:
        """The next block: latents (1, n, C, H, W) of stream frames [start, start + n)."""
        if self.pending is not None:
            self.context, self.pending = self.pending, None
            if self.recache:
                self._reencode()
            else:
                self.cache.forget_prompt()
        model = self.model
        n = (model.first_block_size or model.block_size) if self.blocks_made == 0 else model.block_size
        if self.position + n > self.max_position:
            self._reencode(rebase=True)
        sigmas = self.sampler.block_sigmas(self.blocks_made)
        latents = self.sampler.generate_block(self.context, self.cache, self.position, (n, *self.latent_shape),
                                              self.generators, sigmas)
        self.held.append((self.position, latents))
        self._forget_evicted()
        block = GeneratedBlock(self.frames_made, latents)
        self.frames_made += n
        self.position += n
        self.blocks_made += 1
        return block

    def _forget_evicted(self) -> None:
        """Keep ``held`` to the frames the cache still holds (runs of consecutive positions)."""
        kept, held = set(self.cache.frames), []
        for start, latents in self.held:
            run: list[int] = []
            for i in range(latents.shape[1]):
                if start + i in kept:
                    run.append(i)
                if run and (start + i not in kept or i + 1 == latents.shape[1]):
                    held.append((start + run[0], latents[:, run[0]: run[-1] + 1]))
                    run = []
        self.held = held

    def _reencode(self, rebase: bool = False) -> None:
        """Rebuild the cache from the held frames under the current prompt (at positions 0, 1, … with ``rebase``)."""
        if rebase:
            position, renumbered = 0, []
            for _, latents in self.held:
                renumbered.append((position, latents))
                position += latents.shape[1]
            self.held, self.position = renumbered, position
        self.cache.reset()
        for start, latents in self.held:
            if start != self.cache.next_frame:
                self.cache.skip_to(start)
            self.sampler.remember(latents, self.context, self.cache, start)
