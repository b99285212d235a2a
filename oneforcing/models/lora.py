"""LoRA adapters on a Wan backbone through ``peft``, and their merge into plain weights.

``apply_lora(backbone, LoRAConfig(...))`` wraps the chosen linear layers of the transformer blocks (by default
the self- and cross-attention projections ``to_q, to_k, to_v, to_out.0``) in peft's LoRA layers and freezes
everything else. The causal attention processors call ``attn.to_q(...)`` etc., so they run the adapted layers
unchanged. ``merged_state_dict(module)`` gives the state dict the module would have without adapters, with
``W + (alpha / rank)·B·A`` folded into each adapted weight: plain diffusers names that load into a backbone
without LoRA (the export and ``generator_weights()`` use it). Needs the ``real`` extra (peft).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ADAPTER = "default"
LORA_MARKER = "lora_"
# linear layers of a Wan block (diffusers names), for the error message
WAN_BLOCK_LINEARS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


@dataclass
class LoRAConfig:
    """LoRA of rank ``rank`` with scale ``alpha / rank`` on every module whose name ends with one of
    ``target_modules`` (e.g. ``to_q`` matches both attentions of every block; ``attn1.to_q`` self-attention only)."""

    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0


def as_lora_config(value: LoRAConfig | dict | None) -> LoRAConfig | None:
    return LoRAConfig(**value) if isinstance(value, dict) else value


def apply_lora(backbone: nn.Module, config: LoRAConfig) -> nn.Module:
    """Inject LoRA into ``backbone.transformer`` in place; only the adapters stay trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("LoRA needs peft: pip install 'oneforcing[real]' (or pip install peft).") from error
    if config.rank < 1:
        raise ValueError(f"LoRA rank={config.rank} must be >= 1.")
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                             lora_dropout=config.dropout, bias="none")
    try:
        inject_adapter_in_model(peft_config, backbone.transformer, adapter_name=ADAPTER)
    except ValueError as error:
        raise ValueError(f"LoRA target_modules {list(config.target_modules)} match no layer of the Wan backbone "
                         f"({error}); use names of its linear layers, e.g. {list(WAN_BLOCK_LINEARS)}.") from error
    set_trainable(backbone, True)
    return backbone


def has_lora(module: nn.Module) -> bool:
    return any(LORA_MARKER in name for name, _ in module.named_parameters())


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """``requires_grad_(trainable)`` that keeps a LoRA model's base weights frozen (only adapters train)."""
    adapted = has_lora(module)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(trainable and (not adapted or LORA_MARKER in name))


@torch.no_grad()
def merged_state_dict(module: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` (or ``state``, e.g. the whole state of a sharded module) with every LoRA layer
    folded into its base layer's plain ``weight``/``bias`` keys: W + (alpha / rank)·B·A."""
    from peft.tuners.lora import LoraLayer

    state = dict(module.state_dict() if state is None else state)
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        prefix = f"{name}." if name else ""
        for leaf in ("weight", "bias"):
            base = state.pop(f"{prefix}base_layer.{leaf}", None)
            if base is None:
                continue
            if leaf == "weight" and ADAPTER in layer.lora_A:
                down, up = state[f"{prefix}lora_A.{ADAPTER}.weight"], state[f"{prefix}lora_B.{ADAPTER}.weight"]
                base = base + (layer.scaling[ADAPTER] * (up.float() @ down.float())).to(base.dtype)  # (out, in)
            state[f"{prefix}{leaf}"] = base
        for key in [k for k in state if k.startswith(prefix) and LORA_MARKER in k[len(prefix):]]:
            del state[key]
    return state
