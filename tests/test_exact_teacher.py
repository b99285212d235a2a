"""The exact teacher against a brute force written here, its samples, its errors, and its place in distillation."""

from __future__ import annotations

import math
import sys

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_TOY
from oneforcing.callbacks.export import export_weights
from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.flow_matching import add_noise, euler_sigmas
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.dmd import DMD
from oneforcing.sampling.euler import euler_sample, guided_velocity
from oneforcing.toy.attributes import attribute_accuracy
from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.exact_bank import ExactToyTeacher, caption_videos, one_object_captions
from oneforcing.toy.exact_teacher import ExactTeacher
from oneforcing.toy.text_encoder import ToyTextEncoder
from oneforcing.toy.world import make_video_of

RED = "a large red circle moving left quickly"
BLUE = "a small blue square moving up slowly"
GREEN = "a large green triangle moving down slowly"


# --- an independent brute force: a Python loop over entries, float64 ---------------------------------------
def brute_force(x, sigma, entries):
    """(x̂0, v) of one sample x (F, ...) at σ (F,) over entries [(F, ...)]: w_i ∝ exp(−Σ_f ‖x_f − (1−σ_f)b_f‖²/2σ_f²)."""
    logs = []
    for b in entries:
        logs.append(sum(-float(((x[f] - (1 - sigma[f]) * b[f]) ** 2).sum()) / (2 * float(sigma[f]) ** 2)
                        for f in range(x.shape[0])))
    top = max(logs)
    weights = [math.exp(lp - top) for lp in logs]
    x0 = sum(w * b for w, b in zip(weights, entries)) / sum(weights)
    v = (x - x0) / sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x0, v


@pytest.fixture(scope="module")
def bank():
    """3 entries (2 of caption 0, 1 of caption 1) of small random latents, already float16-exact."""
    g = torch.Generator().manual_seed(0)
    latents = (torch.randn(3, 3, 2, 2, 2, generator=g) * 0.08).half().double()  # (N, F, C, H, W)
    embeddings = torch.zeros(2, 2, 3)
    embeddings[0, 0, 0] = embeddings[1, 1, 2] = 1.0  # (K, L, D), two distinct contexts
    teacher = ExactTeacher(latents, torch.tensor([1, 0, 0]), embeddings, torch.zeros(2, 3), chunk_size=2)
    by_caption = {0: [latents[1], latents[2]], 1: [latents[0]], -1: [latents[1], latents[2], latents[0]]}
    return teacher, embeddings, by_caption


def contexts(embeddings, groups):
    """(B, L, D) contexts: caption k's embedding, or zeros (unconditional) for −1."""
    return torch.stack([embeddings[k] if k >= 0 else torch.zeros_like(embeddings[0]) for k in groups])


def noisy(by_caption, groups, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    clean = torch.stack([by_caption[k][0] for k in groups])
    return add_noise(clean, torch.randn(clean.shape, generator=g, dtype=torch.float64), sigma)


@pytest.mark.parametrize("per_frame", [False, True])
def test_velocity_matches_the_brute_force_posterior(bank, per_frame):
    teacher, embeddings, by_caption = bank
    groups = [0, 1, -1, 0]
    sigma = (torch.tensor([[0.3, 0.6, 0.9], [0.5, 0.2, 0.8], [0.7, 0.7, 0.4], [0.95, 0.35, 0.6]], dtype=torch.float64)
             if per_frame else torch.tensor([0.3, 0.6, 0.9, 0.5], dtype=torch.float64))
    x = noisy(by_caption, groups, sigma)
    v = teacher(x, sigma, contexts(embeddings, groups))
    frames = sigma if per_frame else sigma[:, None].expand(-1, 3)
    for b, k in enumerate(groups):
        x0, want = brute_force(x[b], frames[b], by_caption[k])
        torch.testing.assert_close(v[b], want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(teacher.posterior_mean(x[b:b + 1], sigma[b:b + 1], contexts(embeddings, [k]))[0],
                                   x0, rtol=1e-9, atol=1e-9)
        # the posterior is not degenerate at these σ: the test would not notice wrong weights otherwise
        assert min(float((x0 - e).abs().max()) for e in by_caption[k]) > 1e-3 or len(by_caption[k]) == 1


def test_small_sigma_gives_the_nearest_bank_video_and_a_finite_velocity(bank):
    teacher, embeddings, by_caption = bank
    target = by_caption[0][1]  # the second video of caption 0
    g = torch.Generator().manual_seed(2)
    for s in (0.0, 1e-3):
        x = ((1 - s) * target + s * torch.randn(target.shape, generator=g, dtype=torch.float64))[None]
        for groups in ([0], [-1]):
            sigma = torch.tensor([s], dtype=torch.float64)
            torch.testing.assert_close(teacher.posterior_mean(x, sigma, contexts(embeddings, groups))[0], target)
            assert torch.isfinite(teacher(x, sigma, contexts(embeddings, groups))).all()
    # per frame: one clean frame (σ = 0) of entry j decides, the other frames are pure noise (σ = 1)
    x = torch.randn(1, *target.shape, generator=g, dtype=torch.float64)
    x[0, 1] = target[1]
    sigma = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(teacher.posterior_mean(x, sigma, contexts(embeddings, [-1]))[0], target)
    v = teacher(x, sigma, contexts(embeddings, [-1]))
    assert torch.isfinite(v).all() and float(v[0, 1].abs().max()) < 1e-6  # the clean frame is a bank frame


def test_sigma_one_gives_the_caption_mean_and_the_unconditional_mean_of_all(bank):
    teacher, embeddings, by_caption = bank
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 2, 2, 2, generator=g, dtype=torch.float64)
    x0 = teacher.posterior_mean(x, torch.ones(3, dtype=torch.float64), contexts(embeddings, [0, 1, -1]))
    for b, k in enumerate([0, 1, -1]):
        torch.testing.assert_close(x0[b], torch.stack(by_caption[k]).mean(0))
    assert float((x0[0] - x0[2]).abs().max()) > 1e-2, "the unconditional branch must use all entries"


def test_classifier_free_guidance_through_guided_velocity(bank):
    teacher, embeddings, by_caption = bank
    sigma = torch.tensor([0.6, 0.8], dtype=torch.float64)
    x = noisy(by_caption, [0, 1], sigma, seed=4)
    v = guided_velocity(teacher, x, sigma, contexts(embeddings, [0, 1]), contexts(embeddings, [-1, -1]), 3.0)
    for b, k in enumerate([0, 1]):
        frames = sigma[b].expand(3)
        cond, uncond = brute_force(x[b], frames, by_caption[k])[1], brute_force(x[b], frames, by_caption[-1])[1]
        torch.testing.assert_close(v[b], uncond + 3.0 * (cond - uncond), rtol=1e-9, atol=1e-9)


def test_the_velocity_is_differentiable_in_x(bank):
    """SiD takes the real score's gradient with respect to x_σ."""
    teacher, embeddings, by_caption = bank
    sigma = torch.tensor([0.7, 0.9], dtype=torch.float64)
    x = noisy(by_caption, [0, -1], sigma, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: teacher(x, sigma, contexts(embeddings, [0, -1])), (x,))


def rms(a, b):
    return float((a - b).square().mean().sqrt())


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_euler_samples_from_noise_are_bank_videos_with_the_captioned_attributes(guidance_scale):
    codec, encoder = SpaceToDepthCodec(factor=2), ToyTextEncoder()
    pixels = {RED: caption_videos(RED, 2, seed=7), BLUE: caption_videos(BLUE, 1, seed=7)}  # a 3-video bank
    latents = codec.encode(torch.cat([pixels[RED], pixels[BLUE]]))
    teacher = ExactTeacher(latents, torch.tensor([0, 0, 1]), encoder([RED, BLUE]), encoder([""])[0])
    prompts = [RED, RED, BLUE, BLUE]
    noise = torch.randn(4, *latents.shape[1:], generator=torch.Generator().manual_seed(5))
    samples = codec.decode(euler_sample(teacher, noise, encoder(prompts), euler_sigmas(48, 5.0),
                                        encoder([""] * 4), guidance_scale))  # (4, F, 3, H, W)
    everything = torch.cat([pixels[RED], pixels[BLUE]])
    between = min(rms(everything[i], everything[j]) for i in range(3) for j in range(i))
    for sample, prompt in zip(samples, prompts):
        distances = [rms(sample, video) for video in pixels[prompt]]
        assert min(distances) < 0.01 * between, (min(distances), between)
        assert min(rms(sample, v) for p in pixels if p != prompt for v in pixels[p]) > 0.5 * between
    accuracy = attribute_accuracy(samples, prompts)
    assert (accuracy["colour"], accuracy["direction"], accuracy["shape"]) == (1.0, 1.0, 1.0)


def test_a_context_outside_the_bank_is_named_with_the_fix():
    teacher = ExactToyTeacher(bank_size_per_caption=1, captions=[RED], num_frames=2, frame_size=8)
    with pytest.raises(ValueError, match=rf"no videos of '{BLUE}'.*captions=\[\.\.\.\].*captions=null"):
        teacher(torch.zeros(1, 2, 12, 4, 4), torch.ones(1), ToyTextEncoder()([BLUE]))
    with pytest.raises(ValueError, match="two objects"):
        ExactToyTeacher(bank_size_per_caption=1, captions=[f"{RED} and {BLUE}"], num_frames=2, frame_size=8)
    with pytest.raises(ValueError, match="outside the toy vocabulary"):
        ExactToyTeacher(bank_size_per_caption=1, captions=["a large pink circle moving left quickly"])


def test_the_bank_is_float16_its_memory_is_stated_and_it_stays_out_of_state_dicts():
    teacher = ExactToyTeacher(bank_size_per_caption=3, captions=[RED, BLUE], seed=11, num_frames=4, frame_size=16)
    assert teacher.bank.dtype == torch.float16 and tuple(teacher.bank.shape) == (6, 4, 12, 8, 8)
    assert teacher.bank_bytes == 2 * 3 * (4 * 12 * 8 * 8) * 2  # captions × per caption × F×C×H×W × 2
    for k, caption in enumerate([RED, BLUE]):
        rendered = torch.stack([torch.from_numpy(make_video_of(caption, 11, i, num_frames=4, size=16).pixels)
                                for i in range(3)]).float() / 127.5 - 1.0
        torch.testing.assert_close(teacher.caption_pixels(caption), rendered, atol=1e-3, rtol=0)  # float16 rounding
    assert teacher.state_dict() == {}
    teacher.half()  # a dtype cast moves nothing and rounds nothing
    assert teacher.bank.dtype == torch.float16 and teacher.bank_sq_norms.dtype == torch.float64
    captions = one_object_captions()
    assert len(set(captions)) == 384
    assert 384 * 16 * (12 * 12 * 16 * 16) * 2 == 452_984_832  # the default bank, as the docs state (453 MB)


# --- in a DistillationModule ---------------------------------------------------------------------------
TINY = dict(TINY_TOY)


@pytest.fixture(scope="module")
def neural_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("neural") / "teacher.safetensors"
    weights = WanBackbone(WanConfig(**TINY)).transformer.state_dict()
    save_file({f"model.transformer.{k}": v for k, v in weights.items()}, path)
    return str(path)


def exact_module(neural_file, **overrides):
    kwargs = dict(backbone=TINY, critic_weights=neural_file, generator_weights=neural_file, num_frames=4,
                  frame_size=16, generator_update_every=1, ema_start=None, generator_lr=1e-3, critic_lr=1e-3, seed=3,
                  teacher=ExactToyTeacher(bank_size_per_caption=3, captions=[RED, BLUE], num_frames=4, frame_size=16))
    kwargs.update(overrides)
    return DistillationModule(objectives=[DMD(guidance_scale=2.0)], **kwargs)


def test_dmd_trains_with_the_exact_teacher_and_its_bank_stays_out_of_weights_and_checkpoints(neural_file, tmp_path):
    module = exact_module(neural_file)
    calls = []
    module.teacher.register_forward_hook(lambda *args: calls.append(1))
    g = torch.Generator().manual_seed(0)
    batches = [{"caption": [RED, BLUE], "pixels": torch.rand(2, 4, 3, 16, 16, generator=g) * 2 - 1,
                "num_skipped": torch.tensor(0)} for _ in range(2)]
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert int(module.iteration) == 2 and len(calls) == 2, "one CFG call of the exact teacher per generator step"
    assert not [k for k in module.state_dict() if k.startswith("teacher")]
    exported = export_weights(module, tmp_path / "student.safetensors")
    assert not [k for k in load_file(exported) if k.startswith("teacher")]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher")]
    assert "teacher" not in checkpoint["hyper_parameters"]
    for path in (exported, tmp_path / "last.ckpt"):
        student = load_trained_module(path)
        assert student.generate([RED], seed=0).shape == (1, 4, 3, 16, 16)


def test_one_config_change_puts_the_exact_teacher_in_a_toy_recipe(tmp_path, monkeypatch):
    from conftest import REPO_ROOT

    from oneforcing.cli import OneForcingCLI

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    override = tmp_path / "exact.yaml"
    override.write_text(f"""model:
  init_args:
    teacher_weights: null
    teacher:
      class_path: oneforcing.toy.exact_bank.ExactToyTeacher
      init_args: {{bank_size_per_caption: 2, captions: ["{RED}"]}}
    critic_weights: assets/toy_teacher.safetensors
    generator_weights: assets/toy_teacher.safetensors
""")
    cli = OneForcingCLI(args=["--config", "configs/toy/self_forcing_dmd_1step.yaml", "--config", str(override),
                              "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model.teacher, ExactToyTeacher) and cli.model.teacher.bank.shape[0] == 2
    assert "teacher" not in cli.model.hparams


def test_exact_teacher_configs_that_cannot_work_fail_before_training(neural_file):
    with pytest.raises(ValueError, match="critic has no initialisation"):
        exact_module(neural_file, critic_weights=None)
    with pytest.raises(ValueError, match="both teacher and teacher_weights"):
        exact_module(neural_file, teacher_weights=neural_file)
    with pytest.raises(ValueError, match="build the bank with the module's num_frames"):
        exact_module(neural_file, teacher=ExactToyTeacher(bank_size_per_caption=1, captions=[RED], num_frames=2,
                                                          frame_size=16))
    with pytest.raises(ValueError, match="unconditional_prompt"):
        exact_module(neural_file, negative_prompt="a")


def test_the_posterior_mean_is_the_same_video_under_either_toy_codec():
    """Space-to-depth only permutes pixels, so the exact teacher at factor 4 (16 tokens per frame) denoises to the
    same pixels as at factor 2; its bank has the factor-4 latent shape and a factor that does not divide is refused."""
    two = ExactToyTeacher(bank_size_per_caption=2, captions=[RED, BLUE], num_frames=3, frame_size=16)
    four = ExactToyTeacher(bank_size_per_caption=2, captions=[RED, BLUE], num_frames=3, frame_size=16,
                           spatial_factor=4)
    assert tuple(two.bank.shape[1:]) == (3, 12, 8, 8) and tuple(four.bank.shape[1:]) == (3, 48, 4, 4)
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    sigma, context = torch.tensor([0.3, 0.7]), ToyTextEncoder()([RED, BLUE])
    x0 = {}
    for name, teacher in (("two", two), ("four", four)):
        x = teacher.codec.encode(pixels)
        x0[name] = teacher.codec.decode(x - sigma.view(-1, 1, 1, 1, 1) * teacher(x, sigma, context))
    torch.testing.assert_close(x0["four"], x0["two"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="spatial_factor=3 must be >= 1 and divide frame_size=16"):
        ExactToyTeacher(bank_size_per_caption=1, captions=[RED], num_frames=2, frame_size=16, spatial_factor=3)


def test_the_spatial_factor_of_a_trained_teacher_is_refused():
    from oneforcing.commands.trajectories import export_trajectories

    with pytest.raises(ValueError, match="--spatial-factor sets the exact teacher's codec; a trained teacher's codec "
                                         "follows from its weights"):
        export_trajectories("teacher.safetensors", "nowhere", "out", spatial_factor=4)


def test_teacher_forcing_gives_the_causal_posterior_of_each_frame(bank):
    """Frame f's x̂0 sees the clean frames before f and nothing after: on a bank entry's context it is that entry's
    frame f; frame 0 is the posterior of frame 0 alone (later frames at σ = 1 carry no information)."""
    teacher, embeddings, by_caption = bank
    clean = torch.stack([by_caption[0][1], by_caption[1][0]]).float()  # (2, F, ...), entries of captions 0 and 1
    sigma = torch.tensor([0.6, 0.8])
    x = add_noise(clean, torch.randn(clean.shape, generator=torch.Generator().manual_seed(4)), sigma)
    s = sigma[:, None].expand(2, 3)
    v = teacher.forward_teacher_forcing(x, s, contexts(embeddings, [0, 1]), clean)
    x0 = x - s[..., None, None, None] * v
    assert torch.allclose(x0[:, 1:], clean[:, 1:], atol=1e-4), "the clean context pins the entry"
    for b, group in enumerate([0, 1]):
        alone = torch.tensor([float(sigma[b]), 1.0, 1.0], dtype=torch.float64)
        expected, _ = brute_force(x[b].double(), alone, by_caption[group])
        assert torch.allclose(x0[b, 0].double(), expected[0], atol=1e-5)
    joint = teacher(x, s, contexts(embeddings, [0, 1]))
    assert not torch.allclose(joint[:, 0], v[:, 0], atol=1e-3), "frame 0 differs from the joint posterior's"
    with pytest.raises(ValueError, match="clean context .* must match x"):
        teacher.forward_teacher_forcing(x, s, contexts(embeddings, [0, 1]), clean[:, :2])


def test_autoregressive_sampling_makes_each_frame_independent_of_later_noise():
    """``autoregressive_euler_sample``: frames ≤ f do not change when the noise of frames > f does, and each sample
    is a bank video; the joint sampler's first frame does depend on the later noise (what a causal student can't see)."""
    from oneforcing.sampling.euler import autoregressive_euler_sample

    codec, encoder = SpaceToDepthCodec(factor=2), ToyTextEncoder()
    videos = caption_videos(RED, 4, seed=7, num_frames=4, frame_size=16)
    latents = codec.encode(videos)
    teacher = ExactTeacher(latents, torch.zeros(4, dtype=torch.long), encoder([RED]), encoder([""])[0])
    noise = torch.randn(6, *latents.shape[1:], generator=torch.Generator().manual_seed(0))
    changed = noise.clone()
    changed[:, 2:] = torch.randn(changed[:, 2:].shape, generator=torch.Generator().manual_seed(1))
    context, grid = encoder([RED] * 6), euler_sigmas(24, 5.0)
    ar = [autoregressive_euler_sample(teacher, n, context, grid) for n in (noise, changed)]
    assert torch.allclose(ar[0][:, :2], ar[1][:, :2], atol=1e-6)
    nearest = torch.cdist(ar[0].flatten(1), latents.flatten(1)).min(1).values
    assert float(nearest.max()) < 0.02 * float(torch.pdist(latents.flatten(1)).min())
    joint = [euler_sample(teacher, n, context, grid) for n in (noise, changed)]
    assert (joint[0][:, 0] - joint[1][:, 0]).abs().amax() > 0.1
