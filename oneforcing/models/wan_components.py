"""The codec and text encoder of a Wan2.1 diffusers folder, built together (the folder's layout is ``wan_folder``'s)."""

from __future__ import annotations

import json
from pathlib import Path

from oneforcing.models.codecs import WanVAECodec
from oneforcing.models.text_encoders import UMT5TextEncoder
from oneforcing.models.wan_folder import WanModelFolder


def wan_components(model_dir: str | Path, dtype: str = "bfloat16"):
    """(WanVAECodec, UMT5TextEncoder) reading a Wan2.1 folder's ``vae/``, ``text_encoder/`` and ``tokenizer/``.

    The codec keeps Wan2.1's 16 latent channels and 8x compression (a folder with another VAE is reported, not
    followed); the text width is read from ``text_encoder/config.json`` when present."""
    folder = WanModelFolder(model_dir)
    text_config = folder.text_encoder / "config.json"  # the token width is the folder's (umT5-XXL: 4096)
    dim = json.loads(text_config.read_text()).get("d_model", 4096) if text_config.is_file() else 4096
    return (WanVAECodec(str(folder.vae), dtype=dtype),
            UMT5TextEncoder(str(folder.text_encoder), dtype=dtype, dim=dim, tokenizer=str(folder.tokenizer)))
