"""One-Forcing's GAN objective: the head, identical noising of real and fake, gradient routing, R1/R2."""

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_TOY
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.discriminator import DiscriminatorHead
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.base import StepContext
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.gan import GAN, r1_penalty, r2_penalty
from oneforcing.objectives.rollout import Rollout

TINY = dict(TINY_TOY)


def test_head_gives_one_logit_per_video_from_the_chosen_layers():
    torch.manual_seed(0)
    critic = WanBackbone(WanConfig(**TINY))
    head = DiscriminatorHead(24, 2, [0, 1], 2, ffn_dim=16, num_heads=2)
    x, context = torch.randn(3, 4, 12, 8, 8), torch.randn(3, 5, 46)
    logits = head(critic, x, torch.rand(3), context)[0]
    assert logits.shape == (3, 1)
    assert not critic.transformer.blocks[0]._forward_hooks, "hooks are removed after the call"
    head_last = DiscriminatorHead(24, 2, [1], 1, ffn_dim=16, num_heads=2)
    x2 = x.clone()
    x2[:, :, :, 0, 0] += 1.0
    assert (head_last(critic, x2, torch.rand(3), context)[0] - head_last(critic, x, torch.rand(3), context)[0]).abs().max() > 0


def test_bad_head_configs_fail_clearly():
    with pytest.raises(ValueError, match="do not exist"):
        DiscriminatorHead(24, 2, [5], 1)
    with pytest.raises(ValueError, match="registers"):
        GAN(feature_layers=[0, 1], num_registers=1)
    with pytest.raises(ValueError, match="does not exist in the critic"):
        DistillationModule([DMD(), GAN(feature_layers=[7], num_registers=1)], backbone=TINY, teacher_weights="t")
    assert "trajectory shards" in GAN(real_source="ode").check_data({"world": "toy"})[0]
    assert GAN(real_source="ode").check_data({"kind": "trajectories"}) == []
    prompts_only = {"world": "prompts", "members": ["caption.txt", "attributes.json"]}
    assert "relativistic GAN(real_source='data') reads pixels or latents" in GAN(relativistic=True).check_data(prompts_only)[0]
    assert GAN().check_data({"members": ["caption.txt", "pixels.safetensors"]}) == []


def test_r1_r2_equal_their_finite_difference_formulas_on_a_toy_discriminator():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, generator=g)
    D = lambda x: (x * w).sum(-1) + 0.1 * x.square().sum(-1)  # noqa: E731
    x, eta = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    s1, s2 = 0.1, 0.01
    assert torch.allclose(r1_penalty(D(x), D(x + s1 * eta), s1, "apt"), ((D(x + s1 * eta) - D(x)) ** 2).mean())
    assert torch.allclose(r1_penalty(D(x), D(x + s1 * eta), s1, "divided"),
                          0.5 * (((D(x + s1 * eta) - D(x)) / s1) ** 2).mean())
    assert torch.allclose(r2_penalty(D(x), D(x + s2 * eta), s2), 0.5 * (((D(x + s2 * eta) - D(x)) / s2) ** 2).mean())


def make_ctx(fake, real, seed=0):
    return StepContext(batch={}, context=torch.zeros(fake.shape[0], 5, 46), uncond_context=None, real_latents=real,
                       models={"critic": None}, rng=torch.Generator().manual_seed(seed), iteration=0,
                       rollout_fn=lambda grad: Rollout(fake, torch.ones(fake.shape[1], dtype=torch.bool), 0, 0))


def linear_discriminator(monkeypatch, seed: int):
    """fake, real latents and D(x) = <w, x> standing in for GAN.scores, which records each call's (x, σ)."""
    g = torch.Generator().manual_seed(seed)
    fake, real = torch.randn(3, 4, 2, 2, 2, generator=g), torch.randn(3, 4, 2, 2, 2, generator=g)
    w = torch.randn(4, 2, 2, 2, generator=g)
    calls = []

    def toy_scores(self, ctx, x, sigma, context):
        calls.append((x.clone(), sigma.clone()))
        return (x * w).flatten(1).sum(1), None

    monkeypatch.setattr(GAN, "scores", toy_scores)
    return fake, real, w, calls


def test_real_and_fake_share_noise_and_timestep_and_losses_match_closed_forms(monkeypatch):
    fake, real, w, calls = linear_discriminator(monkeypatch, 1)
    gan = GAN(weight=0.03, feature_layers=[0], num_registers=1, r1_weight=1.0, r1_sigma=0.1, r2_weight=0.001, r2_sigma=0.01)
    terms, logs = gan.critic_loss(make_ctx(fake, real))
    both, sigma = calls[0]
    xf, xr = both.chunk(2)
    s_f, s_r = sigma.chunk(2)
    assert torch.equal(s_f, s_r), "fake and real are scored at the same σ"
    s = s_f[:, None, None, None, None]
    assert torch.allclose((xf - (1 - s) * fake) / s, (xr - (1 - s) * real) / s, atol=1e-5), "the same ε"
    D = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    loss_d = torch.nn.functional.softplus(-D(xr)).mean() + torch.nn.functional.softplus(D(xf)).mean()
    r1 = 1.0 * (D(calls[1][0]) - D(xr)).square().mean()
    r2 = 0.001 * 0.5 * ((D(calls[2][0]) - D(xf)) / 0.01).square().mean()
    assert set(terms) == {"gan_d", "r1", "r2"}
    assert torch.allclose(terms["gan_d"], loss_d, atol=1e-5)
    assert torch.allclose(terms["r1"], r1, atol=1e-5) and torch.allclose(terms["r2"], r2, atol=1e-5)
    assert torch.allclose(gan.weighted(terms), 0.03 * loss_d + r1 + r2, atol=1e-5), "R1/R2 count unscaled by the GAN weight"
    g_loss, _ = gan.generator_loss(make_ctx(fake, real, seed=2))
    assert torch.allclose(g_loss, torch.nn.functional.softplus(-D(calls[-1][0])).mean())


def test_critic_loss_draws_sigma_at_its_own_shift_and_divides_r1_when_asked(monkeypatch):
    """The discriminator's σ comes from ``critic_timestep_shift`` (not the draw's default of 5), and R1 of kind
    'divided' is ½·mean((Δ/σ1)²) through the whole critic loss."""
    from oneforcing.objectives.timesteps import sample_score_sigma

    fake, real, w, calls = linear_discriminator(monkeypatch, 3)
    gan = GAN(weight=0.03, feature_layers=[0], num_registers=1, r1_weight=1.0, r1_sigma=0.1, r1_kind="divided",
              critic_timestep_shift=2.0)
    terms, _ = gan.critic_loss(make_ctx(fake, real, seed=7))
    both, sigma = calls[0]
    assert torch.equal(sigma, sample_score_sigma(3, torch.Generator().manual_seed(7), 2.0).repeat(2))
    xf, xr = both.chunk(2)
    D = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    loss_d = torch.nn.functional.softplus(-D(xr)).mean() + torch.nn.functional.softplus(D(xf)).mean()
    r1 = 0.5 * ((D(calls[1][0]) - D(xr)) / 0.1).square().mean()
    assert torch.allclose(gan.weighted(terms), 0.03 * loss_d + r1, atol=1e-5)


def test_the_generators_gan_gradient_reaches_only_the_generator(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "critic.safetensors"
    save_file({f"model.{k}": v for k, v in WanBackbone(WanConfig(**TINY)).state_dict().items()}, weights)
    module = DistillationModule([GAN(weight=0.5, feature_layers=[1], num_registers=1, head_ffn_dim=16, head_num_heads=2)],
                                backbone=TINY, generator_weights=str(weights), critic_weights=str(weights),
                                num_frames=3, frame_size=16, generator_update_every=1, ema_start=None)
    seen = []
    original = module.manual_backward

    def record(loss, *args, **kwargs):
        original(loss, *args, **kwargs)
        grads = lambda m: [p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()]  # noqa: E731
        seen.append({"generator": grads(module.generator), "critic": grads(module.critic),
                     "head": grads(module.objectives[0].head)})

    module.manual_backward = record
    batch = {"caption": ["a large red circle moving left quickly"] * 2, "pixels": torch.rand(2, 3, 3, 16, 16) * 2 - 1,
             "num_skipped": torch.tensor(0)}
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    generator_step, critic_step = seen
    assert any(generator_step["generator"]) and not any(generator_step["critic"]) and not any(generator_step["head"])
    assert not any(critic_step["generator"]) and any(critic_step["critic"]) and any(critic_step["head"])


def _tiny_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "critic.safetensors"
    save_file({f"model.{k}": v for k, v in WanBackbone(WanConfig(**TINY)).state_dict().items()}, path)
    return str(path)


def test_shared_flow_pass_gives_the_flow_loss_of_the_fake_half_at_the_discriminators_sigma_and_noise(tmp_path):
    weights = _tiny_weights(tmp_path)
    gan = GAN(weight=0.03, feature_layers=[1], num_registers=1, head_ffn_dim=16, head_num_heads=2, shared_flow_pass=True)
    module = DistillationModule([DMD(train_critic=False), gan], backbone=TINY, teacher_weights=weights,
                                num_frames=3, frame_size=16, ema_start=None)
    module.configure_model()
    g = torch.Generator().manual_seed(3)
    fake, real = torch.randn(2, 3, 12, 8, 8, generator=g), torch.randn(2, 3, 12, 8, 8, generator=g)
    ctx = make_ctx(fake, real, seed=4)
    ctx.context, ctx.models = torch.randn(2, 5, 46, generator=g), {"critic": module.critic}
    terms, logs = gan.critic_loss(ctx)
    replay = torch.Generator().manual_seed(4)  # the same draws: σ, then one ε for both halves
    from oneforcing.objectives.timesteps import sample_score_sigma

    sigma = sample_score_sigma(2, replay, gan.critic_timestep_shift)
    noise = torch.randn(fake.shape, generator=replay)
    s = sigma[:, None, None, None, None]
    with torch.no_grad():
        v = module.critic((1 - s) * fake + s * noise, sigma, ctx.context)  # the fake half alone, batch B
    expected_flow = (v - (noise - fake)).square().mean()
    assert torch.allclose(logs["critic_flow_loss"], expected_flow, rtol=1e-4)
    assert torch.equal(logs["critic_sigma"], sigma.mean())  # the logged σ is the pass's
    assert torch.allclose(terms["critic_flow"], expected_flow, rtol=1e-4)
    assert torch.allclose(gan.weighted(terms), 0.03 * logs["gan_d_loss"] + expected_flow, rtol=1e-4)


def test_shared_flow_pass_with_a_dmd_that_also_trains_the_critic_is_refused(tmp_path):
    with pytest.raises(ValueError, match="train_critic: false"):
        DistillationModule([DMD(), GAN(feature_layers=[1], num_registers=1, shared_flow_pass=True)], backbone=TINY,
                           teacher_weights="t")


def test_discriminator_update_every_skips_the_discriminator_loss_between_its_slots():
    g = torch.Generator().manual_seed(1)
    fake, real = torch.randn(2, 3, 12, 8, 8, generator=g), torch.randn(2, 3, 12, 8, 8, generator=g)
    gan = GAN(feature_layers=[0], num_registers=1, discriminator_update_every=3)
    ctx = make_ctx(fake, real)
    ctx.iteration = 1
    loss, logs = gan.critic_loss(ctx)
    assert logs == {} and loss.item() == 0.0 and not loss.requires_grad
    with pytest.raises(ValueError, match=">= 1"):
        GAN(discriminator_update_every=0)


def test_a_head_with_its_own_optimizer_trains_apart_from_the_critic(tmp_path):
    weights = _tiny_weights(tmp_path)
    gan = GAN(weight=0.5, feature_layers=[1], num_registers=1, head_ffn_dim=16, head_num_heads=2, head_lr=1e-2)
    module = DistillationModule([gan], backbone=TINY, generator_weights=weights, critic_weights=weights,
                                num_frames=3, frame_size=16, generator_update_every=1, ema_start=None, critic_lr=1e-9)
    module.configure_model()
    before = [p.detach().clone() for p in gan.parameters()]
    batch = {"caption": ["a large red circle moving left quickly"] * 2, "pixels": torch.rand(2, 3, 3, 16, 16) * 2 - 1,
             "num_skipped": torch.tensor(0)}
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    critic_opt, head_opt = trainer.optimizers[1], trainer.optimizers[2]
    head_ids = {id(p) for p in gan.parameters()}
    assert not head_ids & {id(p) for g in critic_opt.param_groups for p in g["params"]}
    assert head_ids == {id(p) for g in head_opt.param_groups for p in g["params"]} and head_opt.defaults["lr"] == 1e-2
    moved = max((p - b).abs().max().item() for p, b in zip(gan.parameters(), before))
    assert moved > 1e-4, "the head's own optimizer stepped at its own learning rate"
    assert trainer.global_step == 1, "one counted step per iteration"
