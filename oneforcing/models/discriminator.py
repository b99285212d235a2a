"""One-Forcing's discriminator head on the critic (docs/algorithms.md §11).

Learned register tokens attention-pool the critic's hidden states after chosen transformer blocks (read
through forward hooks on diffusers' blocks, no fork); the pooled tokens go through an MLP to one logit
per video. Time and text enter only through the critic's features.

Per feature layer ℓ_r with register q_r (RMSNorm-ed learned vector):
    a = MHA(query = q_r, keys/values = LN_affine(h_ℓr))        (RMSNorm on q and k, no mask)
    tok = q_r + a;   out_r = tok + FFN(LN(tok)),   FFN = Linear, GELU(tanh), Linear
    logit = Linear(SiLU(Linear(LN([out_1, …, out_R]))))          -> (B, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.normalization import FP32LayerNorm
from torch import nn


class RegisterPool(nn.Module):
    """One register token attention-pooling a sequence of hidden states (B, S, D) -> (B, D)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"discriminator dim {dim} is not divisible by its {num_heads} heads.")
        self.num_heads = num_heads
        # fp32 whatever the parameters' dtype (bf16 under DeepSpeed's bf16 mode), through the module's own forward
        # (ZeRO-3 gathers a submodule's parameters only there)
        self.norm_kv = FP32LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.norm_ffn = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, register: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        B, S, D = hidden.shape
        H = self.num_heads
        q = self.norm_q(self.to_q(register)).expand(B, 1, D)                  # (B, 1, D)
        kv = self.norm_kv(hidden)  # in fp32, back in hidden's dtype
        k, v = self.norm_k(self.to_k(kv)), self.to_v(kv)                       # (B, S, D)
        q, k, v = (t.unflatten(-1, (H, D // H)).transpose(1, 2) for t in (q, k, v))  # (B, H, S, D/H)
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)   # (B, 1, D)
        token = register.expand(B, 1, D) + self.to_out(pooled)
        return (token + self.ffn(self.norm_ffn(token))).squeeze(1)              # (B, D)


class DiscriminatorHead(nn.Module):
    """Registers + per-layer pools + logit MLP; call with the critic to score noisy latents."""

    def __init__(self, dim: int, num_layers: int, feature_layers: Sequence[int], num_registers: int,
                 ffn_dim: int = 512, num_heads: int = 4, eps: float = 1e-6) -> None:
        super().__init__()
        problems = []
        missing = [layer for layer in feature_layers if not 0 <= layer < num_layers]
        if missing:
            problems.append(f"feature layers {missing} do not exist in a critic of {num_layers} blocks "
                            f"(valid: 0..{num_layers - 1})")
        if num_registers != len(feature_layers):
            problems.append(f"{num_registers} registers for {len(feature_layers)} feature layers; "
                            "One-Forcing uses one register per feature layer")
        if problems:
            raise ValueError("Invalid discriminator head: " + "; ".join(problems))
        self.feature_layers = list(feature_layers)
        self.registers = nn.Parameter(torch.randn(num_registers, 1, dim) * 0.02)  # N(0, 0.02²)
        self.register_norm = nn.RMSNorm(dim, eps=eps)
        self.pools = nn.ModuleList(RegisterPool(dim, num_heads, ffn_dim, eps) for _ in feature_layers)
        self.logit = nn.Sequential(nn.LayerNorm(num_registers * dim), nn.Linear(num_registers * dim, dim), nn.SiLU(),
                                   nn.Linear(dim, 1))

    def shard_units(self) -> list[nn.Module]:
        """FSDP units, inner first: each pool, the logit MLP, then the head (registers)."""
        return [*self.pools, self.logit, self]

    def forward(self, critic: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, 1), the critic's velocity (B, F, C, H, W)) of noisy latents x (B, F, C, H, W) at σ (B,),
        from one critic forward."""
        features: dict[int, torch.Tensor] = {}
        blocks = critic.transformer.blocks
        hooks = [blocks[layer].register_forward_hook(
            lambda module, args, output, layer=layer: features.__setitem__(layer, output))
            for layer in self.feature_layers]
        try:
            velocity = critic(x, sigma, context)
        finally:
            for hook in hooks:
                hook.remove()
        registers = self.register_norm(self.registers)  # (R, 1, D)
        pooled = [pool(registers[r], features[layer]) for r, (pool, layer) in enumerate(zip(self.pools, self.feature_layers))]
        return self.logit(torch.cat(pooled, dim=-1)), velocity  # (B, 1), (B, F, C, H, W)
