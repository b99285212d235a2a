"""The Wan2.1 latent codec: pixels (B, F, 3, H, W) in [-1, 1] <-> latents (B, F, C, h, w).

It wraps diffusers' AutoencoderKLWan, whose layout (B, C, F, H, W) is converted here, once. The toy world's
exact codec is ``oneforcing.toy.codec.SpaceToDepthCodec``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from oneforcing.models.wan_folder import vae_spatial_factor, vae_temporal_factor


class WanVAECodec(nn.Module):
    """AutoencoderKLWan with Wan2.1's per-channel latent normalisation, from a local diffusers folder.

    The VAE loads on first use (``load()``), so that configs build and validate without the weights (e.g. on
    the meta device); ``latent_channels`` and ``spatial_factor`` are Wan2.1's and checked against the folder.
    Latents are ``(z - mean) / std`` per channel with the folder's ``latents_mean`` / ``latents_std`` (Wan2.1's
    16 values each); pixels (B, 1 + 4k, 3, H, W) in [-1, 1] <-> latents (B, 1 + k, 16, H/8, W/8). The frozen VAE is
    kept out of the module's state dict (checkpoints and exports hold trained weights only) and follows the
    device of the tensors it is given.
    """

    def __init__(self, path: str, dtype: str = "bfloat16", latent_channels: int = 16, spatial_factor: int = 8) -> None:
        super().__init__()
        self.path, self.dtype = path, dtype
        self.latent_channels, self.spatial_factor = latent_channels, spatial_factor
        self.temporal_factor = 4
        self._loaded: dict = {}  # a plain dict: not a submodule, not in state_dict()

    @property
    def vae(self):
        return self._loaded.get("vae")

    def load(self) -> None:
        if self.vae is not None:
            return
        from diffusers import AutoencoderKLWan


        root = Path(self.path)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"VAE directory {self.path} does not exist or has no config.json; point the codec "
                                    "(or model_dir) at the Wan2.1 diffusers folder's 'vae' folder.")
        vae = AutoencoderKLWan.from_pretrained(self.path, torch_dtype=getattr(torch, self.dtype), local_files_only=True)
        config = dict(vae.config)
        if config["z_dim"] != self.latent_channels:
            raise ValueError(f"{self.path} has {config['z_dim']} latent channels, the config says {self.latent_channels}: "
                             "it is not Wan2.1's VAE (16 channels); use a Wan2.1 vae folder or set latent_channels "
                             "and the backbone's in/out_channels to match.")
        if vae_spatial_factor(config) != self.spatial_factor:
            raise ValueError(f"{self.path} compresses space {vae_spatial_factor(config)}x, the config says "
                             f"{self.spatial_factor}x; set spatial_factor: {vae_spatial_factor(config)}.")
        self.temporal_factor = vae_temporal_factor(config)
        self._loaded.update(
            vae=vae.requires_grad_(False).eval(),
            mean=torch.tensor(config["latents_mean"], dtype=torch.float32).view(1, 1, -1, 1, 1),
            std=torch.tensor(config["latents_std"], dtype=torch.float32).view(1, 1, -1, 1, 1))

    def _on(self, device: torch.device):
        self._loaded["vae"] = self.vae.to(device)
        return self.vae, self._loaded["mean"].to(device), self._loaded["std"].to(device)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.load()
        frames, t = pixels.shape[1], self.temporal_factor
        if (frames - 1) % t:
            raise ValueError(f"Wan's VAE encodes 1 + {t}k frames; got {frames}. Trim or pad the videos to "
                             f"{frames - (frames - 1) % t} frames.")
        vae, mean, std = self._on(pixels.device)
        x = rearrange(pixels, "b t c h w -> b c t h w").to(vae.dtype)
        z = vae.encode(x).latent_dist.mode()  # (B, C, F', h, w)
        return (rearrange(z, "b c t h w -> b t c h w").float() - mean) / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.load()
        vae, mean, std = self._on(latents.device)
        z = rearrange(latents.float() * std + mean, "b t c h w -> b c t h w").to(vae.dtype)
        return rearrange(vae.decode(z).sample.float(), "b c t h w -> b t c h w").clamp(-1, 1)
