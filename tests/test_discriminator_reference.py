"""The discriminator head against a functional re-implementation of its documented architecture.

models/discriminator.py, per feature layer ℓ_r with register q_r (RMSNorm-ed learned vector):
    a = MHA(query = q_r, keys/values = LN_affine(h_ℓr))   (RMSNorm on q and k, no mask)
    tok = q_r + a;   out_r = tok + FFN(LN(tok)),   FFN = Linear, GELU(tanh), Linear
    logit = Linear(SiLU(Linear(LN_affine([out_1, …, out_R]))))
with the register and pool norms at eps = 1e-6 (the logit LayerNorm at torch's default) and registers
drawn from N(0, 0.02²). The hidden states here have a tiny
variance, so that a norm's eps (1e-6 against torch's 1e-5 default) changes the result.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oneforcing.models.discriminator import DiscriminatorHead, RegisterPool

EPS = 1e-6


def rms_norm(x, weight):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS) * weight


def layer_norm(x, weight=None, bias=None):
    y = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + EPS)
    return y if weight is None else y * weight + bias


def linear(layer: nn.Linear, x):
    return x @ layer.weight.T + layer.bias


def reference_pool(pool: RegisterPool, register: torch.Tensor, hidden: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, D) from register (1, D) and hidden (B, S, D), written from the formulas."""
    B, S, D = hidden.shape
    q = rms_norm(linear(pool.to_q, register), pool.norm_q.weight).expand(B, 1, D)
    kv = layer_norm(hidden, pool.norm_kv.weight, pool.norm_kv.bias)
    k, v = rms_norm(linear(pool.to_k, kv), pool.norm_k.weight), linear(pool.to_v, kv)
    split = lambda t: t.reshape(B, -1, heads, D // heads).transpose(1, 2)  # noqa: E731  (B, H, S, D/H)
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)  # (B, H, 1, S)
    attended = (weights @ v).transpose(1, 2).reshape(B, 1, D)
    token = register.expand(B, 1, D) + linear(pool.to_out, attended)
    first, second = pool.ffn[0], pool.ffn[2]
    out = token + linear(second, F.gelu(linear(first, layer_norm(token)), approximate="tanh"))
    return out.squeeze(1)


def test_register_pool_matches_its_formula():
    torch.manual_seed(0)
    pool = RegisterPool(dim=16, num_heads=4, ffn_dim=24)
    for p in pool.parameters():  # move every parameter off its init so that each one matters
        p.data.add_(0.3 * torch.randn_like(p))
    register = 1e-3 * torch.randn(1, 16)
    hidden = 1e-3 * torch.randn(3, 7, 16)
    assert torch.allclose(pool(register, hidden), reference_pool(pool, register, hidden, 4), atol=1e-5)
    assert set(pool.norm_ffn.state_dict()) == set(), "the FFN's LayerNorm has no affine parameters"
    with pytest.raises(ValueError, match="discriminator dim 10 is not divisible by its 4 heads"):
        RegisterPool(dim=10, num_heads=4, ffn_dim=8)


class FixedFeatureCritic(nn.Module):
    """A critic whose blocks output fixed hidden states (B, S, D) per layer, and whose velocity is x."""

    def __init__(self, features: list[torch.Tensor]) -> None:
        super().__init__()
        self.features = features
        self.transformer = nn.Module()
        self.transformer.blocks = nn.ModuleList(_Fixed(f) for f in features)

    def forward(self, x, sigma, context):
        for block in self.transformer.blocks:
            block(x)
        return x * 2.0


class _Fixed(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value


def test_discriminator_head_matches_its_formula_and_init():
    torch.manual_seed(1)
    dim, layers = 16, 3
    head = DiscriminatorHead(dim, layers, feature_layers=[2, 0], num_registers=2, ffn_dim=24, num_heads=4)
    assert abs(float(head.registers.std()) - 0.02) < 0.006 and head.registers.shape == (2, 1, dim)
    for p in head.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    features = [1e-3 * torch.randn(2, 5, dim) for _ in range(layers)]
    critic = FixedFeatureCritic(features)
    x = torch.randn(2, 3, 4, 2, 2)
    logits, velocity = head(critic, x, torch.rand(2), torch.zeros(2, 1, 1))
    registers = rms_norm(head.registers, head.register_norm.weight)  # (R, 1, D)
    pooled = torch.cat([reference_pool(head.pools[0], registers[0], features[2], 4),
                        reference_pool(head.pools[1], registers[1], features[0], 4)], dim=-1)  # (B, R·D)
    norm, first, _, second = head.logit
    expected = linear(second, F.silu(linear(first, layer_norm(pooled, norm.weight, norm.bias))))
    assert logits.shape == (2, 1) and torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(velocity, 2.0 * x)


def test_head_errors_name_every_problem():
    with pytest.raises(ValueError, match=r"Invalid discriminator head: feature layers \[3\] do not exist in a critic of 3 "
                                         r"blocks \(valid: 0\.\.2\); 1 registers for 2 feature layers; One-Forcing uses "
                                         "one register per feature layer"):
        DiscriminatorHead(16, 3, feature_layers=[0, 3], num_registers=1)
    DiscriminatorHead(16, 3, feature_layers=[2], num_registers=1)  # the last block is a valid feature layer


def test_every_norm_has_the_documented_eps_and_affine_parameters():
    head = DiscriminatorHead(16, 3, feature_layers=[1, 2], num_registers=2, ffn_dim=24, num_heads=4)
    norms = [m for m in head.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 1 + 4 * 2 + 1  # the register norm, 4 per pool, the logit's
    assert all(m.eps == EPS for m in norms[:-1]) and head.logit[0] is norms[-1] and norms[-1].eps == 1e-5
    for pool in head.pools:
        assert pool.norm_kv.weight is not None and pool.norm_kv.bias is not None, "LN_affine on the hidden states"
        assert pool.norm_ffn.weight is None, "the FFN's LayerNorm is not affine"
        assert pool.norm_q.weight is not None and pool.norm_k.weight is not None
    assert head.logit[0].weight is not None and head.logit[0].bias is not None
