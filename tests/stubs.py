"""Stub models whose outputs are known functions of their inputs and that record every call.

They make the wiring of objectives, roll-outs and samplers checkable against hand-written replays: a test
knows what each call should have seen (σ, input, context) and what the loss or sample must then be.
"""

from __future__ import annotations

import torch
from torch import nn

from oneforcing.models.block_layout import BlockLayout


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, F) -> broadcastable against (B, F, C, H, W)."""
    values = values[:, None] if values.ndim == 1 else values
    return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim))).to(like.dtype)


class StubScore(nn.Module):
    """A bidirectional velocity v = a·x + b·σ + c·(mean of the context per sample); records every call.

    ``a`` is a parameter, so gradient routing through the model can be checked; the context term makes the
    conditional and unconditional branches differ.
    """

    def __init__(self, a: float = 0.5, b: float = 0.2, c: float = 1.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b, self.c = b, c
        self.calls: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def velocity(a, b: float, c: float, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return a * x + b * per_sample(sigma, x) + c * per_sample(context.float().mean(dim=(1, 2)), x)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append({"x": x.detach().clone(), "sigma": sigma.detach().clone(),
                           "context": context.detach().clone()})
        return self.velocity(self.a, self.b, self.c, x, sigma, context)

    def expected(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The velocity the stub returns for these inputs, without recording a call."""
        return self.velocity(self.a.detach(), self.b, self.c, x, sigma, context)


class StubCache:
    """Stands in for a KVCache: keeps the inputs of every context pass (σ = the context σ) per block."""

    def __init__(self) -> None:
        self.context_inputs: dict[int, torch.Tensor] = {}


class StubCausal(nn.Module):
    """A causal generator with the streaming interface; v = x − (m + 0.1·offset), m = the mean of the cached
    context-pass inputs so far (per sample), so later blocks depend on what the context passes wrote.

    Records (offset, x, σ, grad enabled) for every ``forward_cached`` call.
    """

    def __init__(self, block_size: int = 1, first_block_size: int | None = None, context_sigma: float = 0.0) -> None:
        super().__init__()
        self.block_size, self.first_block_size = block_size, first_block_size
        self.context_sigma = context_sigma
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls: list[dict] = []

    def layout(self, num_frames: int) -> BlockLayout:
        return BlockLayout(num_frames, self.block_size, self.first_block_size)

    def new_cache(self, batch_size: int, height: int, width: int, num_frames: int, **kwargs) -> StubCache:
        return StubCache()

    @staticmethod
    def memory(cache: StubCache, like: torch.Tensor) -> torch.Tensor:
        if not cache.context_inputs:
            return torch.zeros(like.shape[0], 1, 1, 1, 1)
        return torch.cat(list(cache.context_inputs.values()), dim=1).mean(dim=(1, 2, 3, 4)).view(-1, 1, 1, 1, 1)

    def velocity(self, x: torch.Tensor, cache: StubCache, frame_offset: int) -> torch.Tensor:
        return self.scale * x - (self.memory(cache, x) + 0.1 * frame_offset)

    def forward_cached(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, cache: StubCache,
                       frame_offset: int) -> torch.Tensor:
        self.calls.append({"offset": frame_offset, "x": x.detach().clone(), "sigma": sigma.detach().clone(),
                           "grad": torch.is_grad_enabled()})
        v = self.velocity(x, cache, frame_offset)
        if bool((sigma == self.context_sigma).all()) and not torch.is_grad_enabled():
            cache.context_inputs[frame_offset] = x.detach().clone()
        return v


class RecordingNoise:
    """A noise function that records every draw (the roll-out's ``noise_fn``)."""

    def __init__(self, seed: int = 0, offset: float = 0.0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []
        self.offset = offset

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator) + self.offset
        self.draws.append(noise.clone())
        return noise


class StubFullSequence(StubScore):
    """A StubScore with the causal generator's full-sequence interface (layout, teacher forcing).

    Teacher forcing adds d·clean to the velocity, so a test can tell which clean context it was given.
    """

    def __init__(self, a: float = 0.5, b: float = 0.2, c: float = 1.0, d: float = 0.3, block_size: int = 1,
                 first_block_size: int | None = None) -> None:
        super().__init__(a, b, c)
        self.d, self.block_size, self.first_block_size = d, block_size, first_block_size

    def layout(self, num_frames: int) -> BlockLayout:
        return BlockLayout(num_frames, self.block_size, self.first_block_size)

    def forward_teacher_forcing(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                                clean: torch.Tensor) -> torch.Tensor:
        v = self.forward(x, sigma, context)
        self.calls[-1]["clean"] = clean.detach().clone()
        return v + self.d * clean

    def expected_teacher_forcing(self, x, sigma, context, clean) -> torch.Tensor:
        return self.expected(x, sigma, context) + self.d * clean
