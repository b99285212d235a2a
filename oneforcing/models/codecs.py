"""Latent codecs: pixels (B, F, 3, H, W) in [-1, 1] <-> latents (B, F, C, h, w).

The toy uses an exact, parameter-free space-to-depth codec; the real path wraps diffusers'
AutoencoderKLWan (whose layout (B, C, F, H, W) is converted here, once).
"""

from __future__ import annotations

from pathlib import Path

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

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if pixels.shape[-1] % f or pixels.shape[-2] % f:
            raise ValueError(f"Frame size {tuple(pixels.shape[-2:])} is not divisible by the codec factor {f}.")
        return rearrange(pixels, "b t c (h p) (w q) -> b t (c p q) h w", p=f, q=f)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        f = self.factor
        return rearrange(latents, "b t (c p q) h w -> b t c (h p) (w q)", p=f, q=f).clamp(-1, 1)


class WanVAECodec(nn.Module):
    """AutoencoderKLWan with Wan2.1's per-channel latent normalisation, from a local diffusers folder."""

    def __init__(self, path: str, dtype: str = "bfloat16") -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        if not Path(path).is_dir():
            raise FileNotFoundError(f"VAE directory {path} does not exist; point codec.path at the Wan2.1 'vae' folder.")
        self.vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=getattr(torch, dtype), local_files_only=True)
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, 1, -1, 1, 1), persistent=False)
        self.latent_channels = cfg.z_dim
        self.spatial_factor = 8

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = rearrange(pixels, "b t c h w -> b c t h w").to(self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode()  # (B, C, F', h, w)
        return (rearrange(z, "b c t h w -> b t c h w").float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = rearrange(latents * self.std + self.mean, "b t c h w -> b c t h w").to(self.vae.dtype)
        return rearrange(self.vae.decode(z).sample.float(), "b c t h w -> b t c h w").clamp(-1, 1)
