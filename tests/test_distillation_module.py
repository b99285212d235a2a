"""DistillationModule: update ratio, role isolation, EMA schedule, iteration budget, exact resume, bad config."""


import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_TOY
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.objectives.dmd import DMD

TINY = dict(TINY_TOY)
CAPTIONS = ["a large red circle moving left quickly", "a small blue square moving up slowly"]


def batches(n: int = 64):
    g = torch.Generator().manual_seed(0)
    return [{"caption": CAPTIONS, "pixels": torch.rand(2, 4, 3, 16, 16, generator=g) * 2 - 1,
             "num_skipped": torch.tensor(0)} for _ in range(n)]


def make_module(teacher_file, objectives=None, **overrides):
    kwargs = dict(backbone=TINY, teacher_weights=teacher_file, num_frames=4, frame_size=16, block_size=1,
                  generator_update_every=2, ema_start=1, ema_decay=0.5, generator_lr=1e-3, critic_lr=1e-3, seed=3)
    kwargs.update(overrides)
    return DistillationModule(objectives=objectives if objectives is not None else [DMD(guidance_scale=2.0)], **kwargs)


def trainer(max_steps: int, tmp_path=None, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)


def loader():
    return torch.utils.data.DataLoader(batches(), batch_size=None)


def fit(module, max_steps, tmp_path=None, ckpt_path=None):
    t = trainer(max_steps, tmp_path)
    t.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return t


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_max_steps_counts_iterations_and_the_update_ratio_holds(teacher_file):
    module = make_module(teacher_file)
    counts = {"generator": 0, "critic": 0}

    def counting(objectives, ctx, side, _original=module._sum_losses):
        counts[side] += 1
        return _original(objectives, ctx, side)

    module._sum_losses = counting
    t = fit(module, 5)
    assert int(module.iteration) == 5 and t.global_step == 5
    assert counts == {"generator": 3, "critic": 5}  # iterations 0, 2, 4 update the generator


def test_critic_step_leaves_the_generator_and_generator_step_leaves_the_critic(teacher_file):
    module = make_module(teacher_file, generator_update_every=2, ema_start=None)
    module.configure_model()
    t = trainer(1)
    t.fit(module, train_dataloaders=loader())  # iteration 0: generator step + critic step
    gen_after_0, critic_after_0 = snapshot(module.generator), snapshot(module.critic)
    t = trainer(1)  # a fresh trainer counts from 0: one more iteration
    t.fit(module, train_dataloaders=loader())  # iteration 1: a critic step only
    assert int(module.iteration) == 2
    assert not changed(gen_after_0, module.generator), "a critic-only iteration changed the generator"
    assert changed(critic_after_0, module.critic)
    # a generator step alone (no critic objective) leaves the critic untouched
    module = make_module(teacher_file, objectives=[DMD(guidance_scale=2.0, train_critic=False)], ema_start=None)
    module.configure_model()
    critic_before, gen_before = snapshot(module.critic), snapshot(module.generator)
    fit(module, 2)
    assert not changed(critic_before, module.critic) and changed(gen_before, module.generator)


def test_ema_starts_at_ema_start_and_follows_its_decay(teacher_file, monkeypatch):
    from oneforcing.lightning_modules import distillation

    module = make_module(teacher_file, objectives=[CausalDiffusion()], teacher_weights=None,
                         generator_weights=teacher_file, ema_start=2, ema_decay=0.8)  # d ≠ 1 − d
    module.configure_model()
    initial, history = snapshot(module.generator_ema), []
    original = distillation.update_ema

    def record(ema, live, initialised, decay):
        before = snapshot(ema)
        original(ema, live, initialised, decay)
        history.append((int(module.iteration), before, snapshot(live), snapshot(ema)))

    monkeypatch.setattr(distillation, "update_ema", record)
    fit(module, 4)
    (i2, b2, live2, a2), (i3, before3, live3, a3) = history
    assert (i2, i3) == (2, 3), "the EMA is updated from ema_start on, after every generator step"
    assert all(torch.equal(b2[k], initial[k]) for k in initial), "no EMA update before ema_start"
    assert all(torch.equal(a2[k], live2[k]) for k in a2), "EMA initialised from the weights at ema_start"
    for k in a3:
        assert torch.allclose(a3[k], 0.8 * before3[k] + 0.2 * live3[k], atol=1e-6)
    assert any(not torch.allclose(a3[k], live3[k]) for k in a3), "the EMA lags the live weights"


def test_resume_equals_an_uninterrupted_run(teacher_file, tmp_path):
    uninterrupted = make_module(teacher_file)
    fit(uninterrupted, 4)
    first = make_module(teacher_file)
    t = fit(first, 2, tmp_path)
    ckpt = tmp_path / "stop.ckpt"
    t.save_checkpoint(ckpt)
    resumed = make_module(teacher_file)
    fit(resumed, 4, tmp_path, ckpt_path=str(ckpt))
    assert int(resumed.iteration) == 4
    for name in ("generator", "critic", "generator_ema"):
        a, b = getattr(uninterrupted, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"


def test_bad_configs_fail_before_training(teacher_file, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        make_module(None)
    with pytest.raises(ValueError, match="generator_update_every=0"):
        make_module(teacher_file, generator_update_every=0)
    with pytest.raises(ValueError, match="do not split"):
        make_module(teacher_file, num_frames=4, block_size=3)
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v for k, v in WanBackbone(WanConfig(**dict(TINY, ffn_dim=48))).transformer.state_dict().items()}, wrong)
    module = make_module(str(wrong))
    with pytest.raises(ValueError, match="shape mismatches"):
        module.configure_model()


def test_sample_command_refuses_the_euler_sampler_for_a_student(teacher_file, tmp_path):
    """A causal student has no many-step Euler sampler: asking for one is an error, not a silent switch."""
    from oneforcing.callbacks.export import export_weights
    from oneforcing.commands.sample import sample_command

    module = make_module(teacher_file)
    module.configure_model()
    path = export_weights(module, tmp_path / "student.safetensors")
    with pytest.raises(ValueError, match="causal student.*--sampler streaming"):
        sample_command(["--checkpoint", str(path), "--sampler", "euler", "--prompt", CAPTIONS[0],
                        "--out", str(tmp_path / "samples")])
    assert not (tmp_path / "samples").exists()
