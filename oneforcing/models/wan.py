"""The shared backbone: diffusers' WanTransformer3DModel behind the project's (B, F, C, H, W) layout.

One class serves every role (teacher, critic, causal generator). Its configuration is a typed dataclass
so that YAML (through LightningCLI) reads it field by field; the presets for Wan2.1-T2V-1.3B and 14B live
in ``configs/wan2.1/`` and in ``WAN21_T2V_1_3B`` / ``WAN21_T2V_14B`` below.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.checkpoint
from diffusers import WanTransformer3DModel
from einops import rearrange
from torch import nn

from oneforcing.models.released_checkpoints import (
    is_original_naming,
    is_released_checkpoint,
    released_state,
    strip_leading,
    to_diffusers,
)
from oneforcing.models.wan_folder import LAYOUT, WanModelFolder


@dataclass
class WanConfig:
    """WanTransformer3DModel hyper-parameters; the defaults are the toy model (~1.9 M parameters)."""

    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 512
    in_channels: int = 12
    out_channels: int = 12
    text_dim: int = 46
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def io_problems(self, codec, text_encoder) -> list[str]:
        """Mismatches between this backbone and the codec / text encoder that feed it."""
        problems = []
        if text_encoder.dim != self.text_dim:
            problems.append(f"backbone.text_dim={self.text_dim} but the text encoder gives {text_encoder.dim}-dim "
                            f"tokens; set backbone.text_dim: {text_encoder.dim}")
        if codec.latent_channels != self.in_channels:
            problems.append(f"backbone.in_channels={self.in_channels} but the codec gives {codec.latent_channels} "
                            f"latent channels; set in_channels/out_channels to {codec.latent_channels}")
        return problems


WAN21_T2V_1_3B = WanConfig(
    num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
    in_channels=16, out_channels=16, text_dim=4096,
)
WAN21_T2V_14B = WanConfig(
    num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
    in_channels=16, out_channels=16, text_dim=4096,
)


class WanBackbone(nn.Module):
    """Velocity predictor v(x_t, σ, context) over latents (B, F, C, H, W).

    σ is (B,) for a bidirectional model (one noise level per video) or (B, F) for per-frame noise levels
    (the causal student); the latter is passed to diffusers as one timestep per token.
    """

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = WanTransformer3DModel(**dataclasses.asdict(config))

    @property
    def tokens_per_frame_divisor(self) -> tuple[int, int]:
        return self.config.patch_size[1], self.config.patch_size[2]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, F, C, H, W = x.shape
        p_t, p_h, p_w = self.config.patch_size
        timestep = 1000.0 * sigma.to(torch.float32)
        if timestep.ndim == 2:  # per frame (B, F) -> per token (B, F·h·w)
            timestep = timestep.repeat_interleave((H // p_h) * (W // p_w), dim=1)
        hidden = rearrange(x, "b f c h w -> b c f h w")
        out = self.transformer(hidden, timestep, context.to(x.dtype), return_dict=False)[0]
        return rearrange(out, "b c f h w -> b f c h w")

    def enable_activation_checkpointing(self) -> None:
        """Recompute each Wan block's activations in backward instead of keeping them (torch's non-reentrant
        checkpoint through diffusers' hook): less memory for one more forward per block."""
        self.transformer.enable_gradient_checkpointing(gradient_checkpointing_func=self._checkpointed_block)

    def _checkpointed_block(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    def shard_units(self) -> list[nn.Module]:
        """FSDP units, inner first: each transformer block, then the transformer (embeddings, output head)."""
        return [*self.transformer.blocks, self.transformer]

    @torch.no_grad()
    def adaln_zero_init_(self) -> None:
        """adaLN-Zero (DiT, Peebles & Xie 2023, §3.2) for training from scratch: every block's modulation
        (shift, scale, gate of self-attention and FFN) and the output projection start at zero, so each
        block starts as the identity on its gated branches and the model predicts v = 0. diffusers' own
        init is meant to be overwritten by pretrained weights; from scratch it converges more slowly.
        Wan's cross-attention has no gate and keeps its default init."""
        transformer = self.transformer
        nn.init.zeros_(transformer.condition_embedder.time_proj.weight)  # temb -> 6 modulations per block
        nn.init.zeros_(transformer.condition_embedder.time_proj.bias)
        for block in transformer.blocks:
            nn.init.zeros_(block.scale_shift_table)  # (1, 6, dim)
        nn.init.zeros_(transformer.proj_out.weight)
        nn.init.zeros_(transformer.proj_out.bias)

    def load_weights(self, path: str | Path, strict: bool = True) -> None:
        """Load weights: a diffusers transformer folder, the root of a Wan2.1 diffusers folder (its
        ``transformer/``), a safetensors file, a torch file, or a reference trainer's released ``.pt`` (its
        ``generator``) in Wan's original naming; shape mismatches are reported together."""
        path = Path(path)
        self.load_state(read_backbone_state(path), path, strict)

    def load_state(self, state: dict[str, torch.Tensor], path: str | Path, strict: bool = True) -> None:
        """Load a diffusers-named transformer state dict read from ``path`` (named in the errors)."""
        own = self.transformer.state_dict()
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items() if k in own and own[k].shape != v.shape
        ]
        if mismatched:
            raise ValueError(
                f"Weights {path} do not fit this backbone ({len(mismatched)} shape mismatches, e.g. "
                f"{mismatched[:3]}). The checkpoint was trained with another WanConfig; use the same config."
            )
        differing = config_differences(recorded_backbone_config(path), self.config)
        if differing:
            raise ValueError(
                f"Weights {path} were trained with another WanConfig ({'; '.join(differing)}). The tensors have "
                "the same shapes, but they would be read differently (e.g. another split of the attention "
                "heads); set these backbone fields to the recorded values."
            )
        missing, unexpected = self.transformer.load_state_dict(state, strict=False, assign=own_is_meta(own))
        if strict and (missing or unexpected):
            raise ValueError(
                f"Weights {path} do not match this backbone: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})."
            )


WEIGHT_PREFIXES = ("model.", "generator.", "teacher.", "transformer.")


def read_backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """diffusers-named backbone weights from any of the files ``WanBackbone.load_weights`` accepts."""
    if path.is_dir():
        from safetensors.torch import load_file

        if not any(path.glob("*.safetensors")) and WanModelFolder.looks_like(path):
            path = WanModelFolder(path).transformer  # the root of a Wan2.1 diffusers folder
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path} holds no *.safetensors weights: expected a diffusers transformer folder "
                                    f"or a Wan2.1 diffusers folder with {LAYOUT}.")
        state = {}
        for f in files:
            state.update(load_file(f))
    elif path.is_file():
        state = load_state_file(path)
        if is_released_checkpoint(state):
            return released_state(state, source=str(path))[1]
    else:
        raise FileNotFoundError(f"Weights {path} do not exist; check the path in the config.")
    state = strip_prefixes(select_backbone(state))
    return to_diffusers(state, str(path)) if is_original_naming(state) else state


def select_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """From a module export holding several backbones keep one: a distillation module's generator
    (``generator.*``, not its EMA, critic or teacher), else a teacher module's ``model.*``, else everything."""
    for prefix in ("generator.", "model."):
        chosen = {k: v for k, v in state.items() if k.startswith(prefix)}
        if chosen:
            return chosen
    return state


def recorded_backbone_config(path: str | Path) -> dict | None:
    """The WanConfig recorded in a module export's metadata (``ExportWeights``); None for other files."""
    path = Path(path)
    meta = safetensors_metadata(path) if path.is_file() and path.suffix == ".safetensors" else {}
    recorded = json.loads(meta["hparams"]).get("backbone") if "hparams" in meta else None
    return recorded if isinstance(recorded, dict) else None


# fields that change how the same tensors are read; rope_max_seq_len only sizes a buffer of positions
_SHAPE_PRESERVING_FIELDS = ("num_attention_heads", "attention_head_dim", "qk_norm", "cross_attn_norm", "eps",
                            "patch_size")


def config_differences(recorded: dict | None, config: WanConfig) -> list[str]:
    """'field: file X vs model Y' for each field in which a recorded config differs from ``config``."""
    if not recorded:
        return []
    own = dataclasses.asdict(config)
    return [f"{k}: file {recorded[k]!r} vs model {own[k]!r}" for k in _SHAPE_PRESERVING_FIELDS
            if k in recorded and _as_tuple(recorded[k]) != _as_tuple(own[k])]


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value  # JSON writes tuples as lists


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a module export ('model.transformer.blocks.0...') -> diffusers keys ('blocks.0...')."""
    return {strip_leading(key, WEIGHT_PREFIXES): value for key, value in state.items()}


def own_is_meta(state: dict[str, torch.Tensor]) -> bool:
    return any(t.is_meta for t in state.values())


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} when it has none); reads the header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, or a torch file loaded with ``weights_only=True`` (no arbitrary code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("state_dict", checkpoint)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_on_meta(config: WanConfig) -> WanBackbone:
    """Instantiate without allocating memory (for the 1.3B/14B configurations and sharded loading)."""
    with torch.device("meta"):
        return WanBackbone(config)
