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
    """AutoencoderKLWan with Wan2.1's per-channel latent normalisation, from a local diffusers folder.

    The VAE loads on first use (``load()``), so that configs build and validate without the weights (e.g. on
    the meta device); ``latent_channels`` and ``spatial_factor`` are Wan2.1's and checked against the folder.
    """

    def __init__(self, path: str, dtype: str = "bfloat16", latent_channels: int = 16, spatial_factor: int = 8) -> None:
        super().__init__()
        self.path, self.dtype = path, dtype
        self.latent_channels, self.spatial_factor = latent_channels, spatial_factor
        self.vae = None

    def load(self) -> None:
        if self.vae is not None:
            return
        from diffusers import AutoencoderKLWan

        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"VAE directory {self.path} does not exist; point codec.path at the Wan2.1 'vae' folder.")
        vae = AutoencoderKLWan.from_pretrained(self.path, torch_dtype=getattr(torch, self.dtype), local_files_only=True)
        if vae.config.z_dim != self.latent_channels:
            raise ValueError(f"{self.path} has {vae.config.z_dim} latent channels, the config says {self.latent_channels}.")
        self.vae = vae.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(vae.config.latents_std).view(1, 1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.load()
        x = rearrange(pixels, "b t c h w -> b c t h w").to(self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode()  # (B, C, F', h, w)
        return (rearrange(z, "b c t h w -> b t c h w").float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.load()
        z = rearrange(latents * self.std + self.mean, "b t c h w -> b c t h w").to(self.vae.dtype)
        return rearrange(self.vae.decode(z).sample.float(), "b c t h w -> b t c h w").clamp(-1, 1)


LatentCodec = SpaceToDepthCodec | WanVAECodec
