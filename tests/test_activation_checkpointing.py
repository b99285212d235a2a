"""Activation checkpointing of the Wan blocks: the same gradients as without it on every path it applies to, the
causal mask restored for the recompute, and the KV-cached roll-out calls left as they are (one process, tiny)."""

from __future__ import annotations

import pytest
import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanBackbone, WanConfig
from tests.test_distillation_module import TINY, make_module, teacher_file  # noqa: F401  (fixture)


def gradients(model, loss_of) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_of(model).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def pair(cls, **kwargs):
    torch.manual_seed(0)
    plain = cls(WanConfig(**TINY), **kwargs)
    checkpointed = cls(WanConfig(**TINY), **kwargs)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.enable_activation_checkpointing()
    return plain, checkpointed


def inputs(frames: int = 4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, frames, 12, 8, 8, generator=g), torch.rand(2, frames, generator=g),
            torch.randn(2, 3, TINY["text_dim"], generator=g))


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("path", ["forward", "teacher_forcing"])
def test_the_causal_generator_recomputes_under_its_forward_mask(path):
    plain, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs()

    def loss_of(model):
        if path == "forward":
            return model(x, sigma, context).square().mean()
        return model.forward_teacher_forcing(x, sigma, context, clean=x.flip(0)).square().mean()

    reference = gradients(plain, loss_of)
    assert_same(reference, gradients(checkpointed, loss_of))
    assert checkpointed.transformer.gradient_checkpointing


def test_without_the_mask_restored_the_recompute_fails(monkeypatch):
    """The check above has teeth: a recompute that sees the cleared control attends without the mask, a different
    computation, which torch's checkpoint catches."""
    plain, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs()
    monkeypatch.setattr(CausalWanBackbone, "_checkpointed_block", WanBackbone._checkpointed_block)
    checkpointed.enable_activation_checkpointing()
    with pytest.raises(torch.utils.checkpoint.CheckpointError, match="different number of tensors"):
        gradients(checkpointed, lambda m: m(x, sigma, context).square().mean())


def test_the_bidirectional_critic_gets_its_gradients():
    plain, checkpointed = pair(WanBackbone)
    x, sigma, context = inputs()
    loss_of = lambda m: m(x, sigma[:, 0], context).square().mean()  # noqa: E731
    assert_same(gradients(plain, loss_of), gradients(checkpointed, loss_of))


def test_cached_roll_out_calls_are_not_recomputed():
    plain, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs()
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    def rollout_loss(model):
        cache = model.new_cache(2, 8, 8, 4)
        first = model.forward_cached(x[:, :2], sigma[:, :2], context, cache, 0)
        second = model.forward_cached(x[:, 2:], sigma[:, 2:], context, cache, 2)
        return first.square().mean() + second.square().mean()

    reference = gradients(plain, rollout_loss)
    torch.utils.checkpoint.checkpoint = counting
    try:
        assert_same(reference, gradients(checkpointed, rollout_loss))
        assert calls == []
        gradients(checkpointed, lambda m: m(x, sigma, context).square().mean())
        assert len(calls) == TINY["num_layers"]  # the full-sequence pass: every block
    finally:
        torch.utils.checkpoint.checkpoint = original


def test_the_module_checkpoints_the_roles_it_is_told(teacher_file):
    from oneforcing.objectives.dmd import DMD

    module = make_module(teacher_file, [DMD(guidance_scale=2.0)], activation_checkpointing=["generator", "critic"])
    module.configure_model()
    assert module.generator.transformer.gradient_checkpointing and module.critic.transformer.gradient_checkpointing
    assert not module.teacher.transformer.gradient_checkpointing
    plain = make_module(teacher_file, [DMD(guidance_scale=2.0)])
    plain.configure_model()
    assert not plain.generator.transformer.gradient_checkpointing and not plain.critic.transformer.gradient_checkpointing


def test_checkpointing_an_unknown_or_absent_role_is_refused(teacher_file):
    from oneforcing.objectives.diffusion import CausalDiffusion

    with pytest.raises(ValueError, match=r"activation_checkpointing names \['teacher'\]; it takes the trainable roles"):
        make_module(teacher_file, activation_checkpointing=["teacher"])
    with pytest.raises(ValueError, match="activation_checkpointing names 'critic', but no objective uses a critic"):
        make_module(None, [CausalDiffusion()], activation_checkpointing=["critic"])
