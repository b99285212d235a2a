"""TeacherModule in-process: it learns, it samples, and its exported weights load back for sampling."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_BACKBONE, TINY_FRAMES, TINY_SIZE
from safetensors.torch import load_file, save

from oneforcing.callbacks.export import ExportWeights, export_weights
from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.video_io import atomic_write_bytes


def tiny_teacher(**kwargs) -> TeacherModule:
    torch.manual_seed(0)
    kwargs.setdefault("sample_steps", 3)
    module = TeacherModule(backbone=dict(TINY_BACKBONE), num_frames=TINY_FRAMES, frame_size=TINY_SIZE, **kwargs)
    module.configure_model()
    return module


def test_flow_matching_loss_goes_down_on_a_fixed_batch():
    module = tiny_teacher()
    x0 = torch.rand(2, TINY_FRAMES, 12, TINY_SIZE // 2, TINY_SIZE // 2) * 2 - 1
    context = module.encode_prompts(["a large red circle", "a small blue square"])
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.tensor([0.5, 0.7])
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = module.flow_matching_loss(x0, context, sigma, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_generate_is_deterministic_per_seed():
    module = tiny_teacher().eval()
    prompts = ["a large red circle moving left quickly", "a small green triangle moving up slowly"]
    a = module.generate(prompts, seed=3)
    assert a.shape == (2, TINY_FRAMES, 3, TINY_SIZE, TINY_SIZE)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, module.generate(prompts, seed=3))
    assert not torch.equal(a, module.generate(prompts, seed=4))
    assert torch.allclose(a[1], module.generate(prompts[1:], seed=4)[0], atol=1e-5)  # prompt i uses seed + i


def test_generate_overrides_equal_the_same_settings_in_the_config():
    prompts = ["a large red circle moving left quickly"]
    configured = tiny_teacher(sample_steps=4, sample_shift=2.0, guidance_scale=3.0, guidance_interval=(0.0, 0.7)).eval()
    default = tiny_teacher().eval()  # same seed -> same weights; sampler 3 steps, shift 5, w = 4, guided (0, 1]
    overridden = default.generate(prompts, seed=1, num_steps=4, guidance_scale=3.0, shift=2.0,
                                  guidance_interval=(0.0, 0.7))
    assert torch.equal(overridden, configured.generate(prompts, seed=1))
    assert not torch.equal(overridden, default.generate(prompts, seed=1, num_steps=4, guidance_scale=3.0,
                                                        guidance_interval=(0.0, 0.7)))
    assert not torch.equal(overridden, default.generate(prompts, seed=1, num_steps=4, guidance_scale=3.0, shift=2.0))


def test_exported_weights_load_back_for_sampling(tmp_path):
    module = tiny_teacher(guidance_scale=2.5)
    path = export_weights(module, tmp_path / "weights.safetensors")
    loaded = load_trained_module(path)
    assert loaded.hparams.guidance_scale == 2.5 and loaded.backbone_config.num_layers == 2
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded.generate(["a red circle"], seed=0), module.eval().generate(["a red circle"], seed=0))


def test_half_precision_export_stores_float16_and_loads_back_as_float32(tmp_path):
    module = tiny_teacher()
    path = export_weights(module, tmp_path / "half.safetensors", dtype="float16")
    assert {t.dtype for t in load_file(path).values()} == {torch.float16}
    loaded = load_trained_module(path)
    for name, tensor in module.state_dict().items():
        assert loaded.state_dict()[name].dtype == torch.float32, name
        assert torch.equal(loaded.state_dict()[name], tensor.half().float()), name
    with pytest.raises(ValueError, match="float64.*not supported"):
        ExportWeights(dtype="float64")


def test_weights_exported_from_a_cli_run_load_back(tmp_path):
    """LightningCLI adds ``_class_path`` and ``_instantiator`` to the saved hyper-parameters."""
    module = tiny_teacher()
    hparams = dict(module.hparams, _class_path="oneforcing.lightning_modules.teacher.TeacherModule",
                   _instantiator="lightning.pytorch.cli.instantiate_module")
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    path = tmp_path / "cli.safetensors"
    atomic_write_bytes(path, save(state, metadata={"module": "TeacherModule", "hparams": json.dumps(hparams)}))
    loaded = load_trained_module(path)
    assert set(load_file(path)) == set(loaded.state_dict())


def test_bare_weight_file_is_rejected_with_a_reason(tmp_path):
    path = tmp_path / "bare.safetensors"
    atomic_write_bytes(path, save({"w": torch.zeros(1)}))
    with pytest.raises(ValueError, match="no 'module' metadata"):
        load_trained_module(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trained_module(tmp_path / "none.ckpt")


def test_learning_rate_warms_up_holds_then_follows_a_cosine_to_the_floor():
    import math

    import lightning as L

    from oneforcing.lightning_modules.teacher import TeacherModule

    module = TeacherModule(warmup_steps=10, decay_start_step=100, final_lr_fraction=0.1)
    module.trainer = L.Trainer(max_steps=300, logger=False, enable_checkpointing=False)
    factor = module._lr_factor
    assert factor(0) == pytest.approx(0.1) and factor(9) == 1.0 and factor(100) == 1.0
    assert factor(200) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(300) == pytest.approx(0.1) and factor(400) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="final_lr_fraction"):
        TeacherModule(final_lr_fraction=1.5)


def test_optimizer_builds_without_a_trainer_when_there_is_no_decay():
    """Benchmarks and custom loops call configure_optimizers on a bare module: only the cosine decay (which
    ends at trainer.max_steps) needs a Trainer; warm-up and the constant phase must not ask for one."""
    module = TeacherModule(warmup_steps=4)
    module.configure_model()
    schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert schedule.get_last_lr()[0] == pytest.approx(module.hparams.lr / 4)
    assert module._lr_factor(3) == 1.0 and module._lr_factor(10_000) == 1.0


def test_uniform_sigma_fraction_mixes_uniform_draws_into_the_shifted_logit_normal():
    def draws(**kwargs) -> torch.Tensor:
        return tiny_teacher(**kwargs).draw_sigma(20000, generator=torch.Generator().manual_seed(0))

    shifted = draws(train_shift=3.0)
    # fraction 0 draws nothing extra: the same stream, hence the same σ, as before the option existed
    assert torch.equal(shifted, draws(train_shift=3.0, uniform_sigma_fraction=0.0))
    uniform = draws(train_shift=3.0, uniform_sigma_fraction=1.0)
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs((uniform < 0.15).float().mean().item() - 0.15) < 0.01
    below = (draws(train_shift=3.0, uniform_sigma_fraction=0.2) < 0.15).float().mean().item()
    expected = 0.2 * 0.15 + 0.8 * (shifted < 0.15).float().mean().item()
    assert abs(below - expected) < 0.01, (below, expected)


def test_per_frame_sigma_fraction_draws_one_sigma_per_frame_for_that_share_of_videos():
    def draws(**kwargs) -> torch.Tensor:
        return tiny_teacher(**kwargs).draw_sigma(4000, generator=torch.Generator().manual_seed(0), num_frames=6)

    per_video = draws()
    assert per_video.shape == (4000,)  # fraction 0: one σ per video, and no extra draws (same stream as before)
    mixed = draws(per_frame_sigma_fraction=0.5)
    assert mixed.shape == (4000, 6)
    assert torch.equal(mixed[:, 0] == mixed[:, 1], (mixed == mixed[:, :1]).all(dim=1))
    varying = (mixed != mixed[:, :1]).any(dim=1)
    assert abs(varying.float().mean().item() - 0.5) < 0.03
    assert torch.equal(mixed[~varying, 0], per_video[~varying])  # the other videos keep their per-video draw
    # every frame's σ has the per-video distribution (the shifted logit-normal): same median
    all_frames = draws(per_frame_sigma_fraction=1.0)
    assert abs(all_frames.median().item() - per_video.median().item()) < 0.02


def test_training_step_with_per_frame_sigma_noises_each_frame_at_its_own_level(monkeypatch):
    module = tiny_teacher(per_frame_sigma_fraction=1.0)
    pixels = torch.rand(2, TINY_FRAMES, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    batch = {"pixels": pixels, "caption": ["a red circle", "a blue square"], "num_skipped": torch.tensor(0)}
    seen = {}

    def record(x0, context, sigma, noise):
        seen["sigma"] = sigma
        return TeacherModule.flow_matching_loss(module, x0, context, sigma, noise)

    monkeypatch.setattr(module, "flow_matching_loss", record)
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    loss = module.training_step(batch, 0)
    assert seen["sigma"].shape == (2, TINY_FRAMES) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("bad, message", [
    (dict(uniform_sigma_fraction=1.5), "uniform_sigma_fraction=1.5 must be in"),
    (dict(per_frame_sigma_fraction=-0.1), r"per_frame_sigma_fraction=-0.1 must be in"),
    (dict(guidance_interval=(0.8, 0.2)), r"guidance_interval=\(0.8, 0.2\) must be"),
])
def test_bad_sigma_mixture_or_guidance_interval_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        TeacherModule(backbone=dict(TINY_BACKBONE), **bad)


def test_adaln_zero_teacher_predicts_zero_velocity_before_training():
    module = tiny_teacher(adaln_zero=True)
    x = torch.randn(1, TINY_FRAMES, 12, TINY_SIZE // 2, TINY_SIZE // 2)
    v = module.model(x, torch.tensor([0.5]), module.encode_prompts(["a red circle"]))
    assert torch.equal(v, torch.zeros_like(v))
