"""The toy world's latent codec: exact and parameter-free, pixels (B, F, 3, H, W) in [-1, 1] <-> latents (B, F, C, h, w)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class SpaceToDepthCodec(nn.Module):
    """Folds each f×f pixel patch into channels: (B, F, 3, H, W) -> (B, F, 3·f², H/f, W/f). Lossless."""

    def __init__(self, factor: int = 2, channels: int = 3) -> None:
        super().__init__()
        self.factor = factor
        self.latent_channels = channels * factor * factor
        self.spatial_factor = factor

    @classmethod
    def matching(cls, latent_channels: int, channels: int = 3) -> "SpaceToDepthCodec":
        """The codec whose latents have ``latent_channels`` (= channels·f²): the toy default of a backbone, so that
        its ``in_channels`` alone records the codec (12: f = 2, 64 tokens per 32×32 frame; 48: f = 4, 16 tokens).
        Any other count gets f = 2, which the backbone's io check then reports."""
        factor = round((latent_channels / channels) ** 0.5)
        return cls(factor if factor >= 1 and channels * factor * factor == latent_channels else 2, channels)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if pixels.shape[-1] % f or pixels.shape[-2] % f:
            raise ValueError(f"Frame size {tuple(pixels.shape[-2:])} is not divisible by the codec factor {f}.")
        return rearrange(pixels, "b t c (h p) (w q) -> b t (c p q) h w", p=f, q=f)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        f = self.factor
        return rearrange(latents, "b t (c p q) h w -> b t c (h p) (w q)", p=f, q=f).clamp(-1, 1)
