"""Activation checkpointing of the Wan blocks: the same gradients as without it on every path it applies to, the
causal mask restored for the recompute, the KV-cached roll-out calls recomputed over their forward's history
(one process, tiny)."""

from __future__ import annotations

import pytest
import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanBackbone, WanConfig
from tests.test_distillation_module import TINY, make_module


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


class CountingCheckpoint:
    """torch's checkpoint, counting its calls."""

    def __init__(self, monkeypatch):
        self.calls, original = 0, torch.utils.checkpoint.checkpoint

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)


def rollout_loss_of(x, sigma, context, keep_gradient=False, window=None):
    """A roll-out as the objectives run it: each 2-frame block denoised without gradient, its exit step with
    gradient, then the context pass on the clean block (rewriting its slots) before the next block appends."""

    def loss_of(model):
        model.window_frames = window
        cache = model.new_cache(2, 8, 8, 6, keep_gradient=keep_gradient)
        loss = 0.0
        for start in (0, 2, 4):
            block, s = x[:, start:start + 2], sigma[:, start:start + 2]
            with torch.no_grad():
                model.forward_cached(block, s, context, cache, start)
            out = model.forward_cached(block * 0.5, s * 0.5, context, cache, start)  # the exit step, with gradient
            loss = loss + out.square().mean()
            with torch.no_grad():
                model.forward_cached(out.detach(), torch.zeros_like(s), context, cache, start)  # context pass
        return loss

    return loss_of


def test_cached_roll_out_calls_recompute_over_their_forward_history(monkeypatch):
    """The gradient-carrying roll-out calls are checkpointed per block and recompute over the cache as their forward
    saw it, although later calls rewrote their own slots and appended after them: the same gradients."""
    plain, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs(frames=6)
    loss_of = rollout_loss_of(x, sigma, context)
    reference = gradients(plain, loss_of)
    counter = CountingCheckpoint(monkeypatch)
    assert_same(reference, gradients(checkpointed, loss_of))
    assert counter.calls == 3 * TINY["num_layers"]  # the 3 exit steps, every block; the no-grad calls never


def test_a_recompute_that_read_the_rewritten_slots_would_differ():
    """The check above has teeth: attending over the cache as it is at backward time (the block's own slots
    rewritten by the context pass) gives other gradients."""
    from oneforcing.models import causal_attention

    plain, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs(frames=6)
    loss_of = rollout_loss_of(x, sigma, context)
    reference = gradients(plain, loss_of)
    original = causal_attention.CausalSelfAttnProcessor.__call__

    def stale(self, attn, hidden_states, *args, **kwargs):
        if self.control.replay is not None:  # recompute over everything the cache holds now
            self.control.replay = (self.control.cache.current[1], *self.control.replay[1:])
        return original(self, attn, hidden_states, *args, **kwargs)

    causal_attention.CausalSelfAttnProcessor.__call__ = stale
    try:
        with pytest.raises(torch.utils.checkpoint.CheckpointError):
            gradients(checkpointed, loss_of)
    finally:
        causal_attention.CausalSelfAttnProcessor.__call__ = original
    assert reference


def test_an_eviction_before_the_recompute_is_an_error():
    _, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs(frames=6)
    with pytest.raises(RuntimeError, match="rolling window evicted frames it attended to; train with a window of at "
                                           "least the roll-out's frames"):
        gradients(checkpointed, rollout_loss_of(x, sigma, context, window=4))


def test_cache_gradient_calls_are_not_checkpointed(monkeypatch):
    """With the K/V kept for later blocks' gradient a cached call runs as it is (same gradients, no checkpoint)."""
    plain, checkpointed = pair(CausalWanBackbone, block_size=2)
    x, sigma, context = inputs(frames=6)
    loss_of = rollout_loss_of(x, sigma, context, keep_gradient=True)
    reference = gradients(plain, loss_of)
    counter = CountingCheckpoint(monkeypatch)
    assert_same(reference, gradients(checkpointed, loss_of))
    assert counter.calls == 0
    gradients(checkpointed, lambda m: m(x, sigma, context).square().mean())
    assert counter.calls == TINY["num_layers"]  # the full-sequence pass: every block


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
