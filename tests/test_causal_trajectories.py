"""`oneforcing data trajectories` with a causal teacher (Causal Forcing's causal ODE, docs/algorithms.md §8).

A DistillationModule checkpoint is sampled in teacher-forcing mode on the ground-truth clean context; a
TeacherModule checkpoint keeps the bidirectional export. The references here are brute-force Euler loops
written out step by step (separate conditional and unconditional calls, CFG in the standard form).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import webdataset as wds
from conftest import REPO_ROOT, TINY_BACKBONE, TINY_FRAMES, TINY_SIZE, describe, run_cli, tiny_backbone_args
from safetensors.torch import load_file, save_file

from oneforcing.callbacks.export import export_weights
from oneforcing.commands.data import build_parser
from oneforcing.commands.data import write_toy_dataset
from oneforcing.commands.trajectories import export_trajectories
from oneforcing.data.shards import decode_sample, encode_sample, read_index, write_shards
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.lightning_modules.trajectory_teachers import EXACT as EXACT_TEACHER
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import euler_sigmas
from oneforcing.models.wan import WanConfig
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.sampling.euler import teacher_forcing_velocity
from oneforcing.sampling.trajectories import sample_trajectory
from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.text_encoder import ToyTextEncoder

TINY = dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46)
STEPS, SHIFT, W = 8, 5.0, 6.0
INDICES = [0, 2, 4, 6]  # the warped [1000, 750, 500, 250] at shift 5 on the 8-step grid
GRID = euler_sigmas(STEPS, SHIFT)
FP16 = dict(rtol=2.0 ** -11, atol=1e-5)  # float16 storage of a float32 value: half an ulp, nothing more
TEXT, CODEC = ToyTextEncoder(), SpaceToDepthCodec(factor=2)


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Random weights well away from any zero init, so that context, clean frames and CFG all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def causal_module(block_size: int = 1, ema: bool = False, seed: int = 0) -> DistillationModule:
    """A tiny Causal Forcing stage-1 module (CausalDiffusion, teacher forcing) with random generator weights."""
    module = DistillationModule(objectives=[CausalDiffusion(teacher_forcing=True)], backbone=TINY,
                                num_frames=TINY_FRAMES, frame_size=TINY_SIZE, block_size=block_size,
                                ema_start=0 if ema else None)
    module.configure_model()
    perturb_(module.generator, seed)
    if ema:
        module.generator_ema.load_state_dict(module.generator.state_dict())
        perturb_(module.generator_ema, seed + 1)
        module.ema_initialised.fill_(True)
    return module


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("teachers")
    causal = causal_module()
    bidirectional = TeacherModule(backbone=TINY, num_frames=TINY_FRAMES, frame_size=TINY_SIZE)
    bidirectional.configure_model()
    perturb_(bidirectional.model, 7)
    return {"causal": causal, "causal_file": export_weights(causal, root / "causal.safetensors"),
            "bidirectional": bidirectional,
            "bidirectional_file": export_weights(bidirectional, root / "bidirectional.safetensors")}


def read_split(split: Path) -> tuple[dict, list[dict]]:
    index = read_index(split)
    urls = [str(split / s["name"]) for s in index["shards"]]
    return index, [decode_sample(raw) for raw in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]


def copy_split(source: Path, out: Path, count: int, edit=lambda pixels: pixels) -> Path:
    """The first ``count`` videos of ``source`` with ``edit`` applied to their pixels (uint8 (F, 3, H, W))."""
    _, samples = read_split(source)
    write_shards((encode_sample(s["key"], {"pixels": edit(s["pixels"].clone())}, s["caption"], s["attributes"])
                  for s in samples[:count]), out, 16, meta=dict(world="toy", background="flat"))
    return out


def export(teacher, source, out, **kw) -> tuple[dict, list[dict]]:
    args = dict(num_videos=3, steps=STEPS, shift=SHIFT, guidance_scale=W, batch_size=2, progress=False)
    export_trajectories(str(teacher), str(source), str(out), **{**args, **kw})
    return read_split(Path(out))


def brute_force_euler(velocity, noise, context, uncond, grid=GRID, w=W):
    """States before each step and the final x of x ← x + (σ' − σ)·(u + w·(c − u)), c and u from separate calls."""
    x, states = noise, []
    for i in range(len(grid) - 1):
        s, s_next = float(grid[i]), float(grid[i + 1])
        states.append(x.clone())
        c, u = velocity(x, s, context), velocity(x, s, uncond)
        x = x + (s_next - s) * (u + w * (c - u))
    return states, x


def teacher_forcing_reference(generator: CausalWanBackbone, x0: torch.Tensor):
    """forward_teacher_forcing on the ground truth x0 with every frame at σ."""
    return lambda x, s, context: generator.forward_teacher_forcing(
        x, torch.full(x.shape[:2], s), context, clean=x0)


def generator_of(module: DistillationModule, block_size: int = 1, ema: bool = False) -> CausalWanBackbone:
    generator = CausalWanBackbone(WanConfig(**TINY), block_size=block_size).eval()
    generator.load_state_dict((module.generator_ema if ema else module.generator).state_dict())
    return generator


def check_against_reference(samples: list[dict], velocity_for, negative_prompt: str = "", seed: int = 0) -> None:
    """Each stored ODE output and snapshot equals the brute-force integration from its recorded noise seed."""
    for i, s in enumerate(samples):
        assert s["attributes"]["noise_seed"] == seed + i
        x0 = CODEC.encode(s["pixels"][None].float() / 127.5 - 1.0)
        noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed + i))[None]
        with torch.no_grad():
            states, final = brute_force_euler(velocity_for(x0), noise, TEXT([s["caption"]]), TEXT([negative_prompt]))
        torch.testing.assert_close(s["ode_output"].float(), final[0], **FP16)
        assert s["trajectory"].shape[0] == len(INDICES)
        for k, index in enumerate(INDICES):
            torch.testing.assert_close(s["trajectory"][k].float(), states[index][0], **FP16)
        torch.testing.assert_close(s["trajectory_sigmas"], GRID[INDICES].float())


# --- (a) the causal export is teacher-forcing Euler with CFG ---------------------------------------------------
def test_teacher_forcing_integration_equals_a_brute_force_euler_loop(teachers, toy_data):
    """float32, batch of 2 through the exporter's 2B CFG batch (clean context repeated) vs one video at a time."""
    _, samples = read_split(toy_data / "train")
    generator = generator_of(teachers["causal"])
    x0 = CODEC.encode(torch.stack([s["pixels"] for s in samples[:2]]).float() / 127.5 - 1.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    context, uncond = TEXT([s["caption"] for s in samples[:2]]), TEXT([""] * 2)
    with torch.no_grad():
        trajectory, output = sample_trajectory(teacher_forcing_velocity(generator, x0), noise, context, uncond,
                                               GRID, W, INDICES)
        unguided = sample_trajectory(teacher_forcing_velocity(generator, x0), noise, context, uncond, GRID, 1.0,
                                     INDICES)[1]
        for b in range(2):
            states, final = brute_force_euler(teacher_forcing_reference(generator, x0[b:b + 1]), noise[b:b + 1],
                                              context[b:b + 1], uncond[b:b + 1])
            torch.testing.assert_close(output[b], final[0], rtol=0, atol=1e-5)
            for k, index in enumerate(INDICES):
                torch.testing.assert_close(trajectory[b, k], states[index][0], rtol=0, atol=1e-5)
    assert (output - unguided).abs().max() > 1e-2, "CFG must matter in this test, or it proves nothing"


def test_causal_export_writes_the_teacher_forcing_trajectories_and_says_so(teachers, toy_data, tmp_path):
    messages = []
    index, samples = export(teachers["causal_file"], toy_data / "train", tmp_path / "causal", log=messages.append)
    assert len(samples) == 3 and index["total"] == 3
    check_against_reference(samples, lambda x0: teacher_forcing_reference(generator_of(teachers["causal"]), x0))
    _, source = read_split(toy_data / "train")
    for stored, original in zip(samples, source):
        assert stored["key"] == original["key"] and stored["caption"] == original["caption"]
        assert torch.equal(stored["pixels"], original["pixels"])
    assert index["teacher_kind"] == "causal_teacher_forcing"
    assert (index["block_size"], index["first_block_size"]) == (1, None)
    assert index["teacher_weights"] == "generator" and index["negative_prompt"] == ""
    assert (index["guidance_scale"], index["steps"], index["shift"]) == (W, STEPS, SHIFT)
    assert any("causal teacher forcing" in m and "raw generator" in m for m in messages), messages


# --- (b) it conditions on the ground truth; the bidirectional export is unchanged ------------------------------
def test_causal_trajectories_follow_the_ground_truth_context_and_bidirectional_ones_do_not(teachers, toy_data,
                                                                                           tmp_path):
    def invert_frame(frame):
        def edit(pixels):
            pixels[frame] = 255 - pixels[frame]
            return pixels
        return edit

    original = copy_split(toy_data / "train", tmp_path / "src_original", 2)
    first = copy_split(toy_data / "train", tmp_path / "src_first", 2, invert_frame(0))
    last = copy_split(toy_data / "train", tmp_path / "src_last", 2, invert_frame(TINY_FRAMES - 1))
    causal = {name: export(teachers["causal_file"], src, tmp_path / f"causal_{name}", num_videos=2)[1]
              for name, src in (("original", original), ("first", first), ("last", last))}
    for a, b, c in zip(causal["original"], causal["first"], causal["last"]):
        # frame 0 sees no clean context; every later frame sees the (changed) ground-truth frame 0
        torch.testing.assert_close(a["ode_output"][0].float(), b["ode_output"][0].float(), rtol=0, atol=1e-6)
        assert (a["ode_output"][1:].float() - b["ode_output"][1:].float()).abs().amax(dim=(1, 2, 3)).min() > 1e-3
        assert (a["trajectory"][1:, 1:].float() - b["trajectory"][1:, 1:].float()).abs().max() > 1e-3
        # the last ground-truth frame is context for no frame
        torch.testing.assert_close(a["ode_output"].float(), c["ode_output"].float(), rtol=0, atol=1e-6)

    bidi_index, bidi = export(teachers["bidirectional_file"], original, tmp_path / "bidi_original", num_videos=2)
    _, bidi_first = export(teachers["bidirectional_file"], first, tmp_path / "bidi_first", num_videos=2)
    model = teachers["bidirectional"].model.eval()
    check_against_reference(bidi, lambda x0: lambda x, s, context: model(x, torch.full((x.shape[0],), s), context))
    for a, b in zip(bidi, bidi_first):  # the bidirectional teacher never sees the ground truth
        assert torch.equal(a["ode_output"], b["ode_output"]) and torch.equal(a["trajectory"], b["trajectory"])
    assert (bidi[0]["ode_output"].float() - causal["original"][0]["ode_output"].float()).abs().max() > 1e-2
    assert bidi_index["teacher_kind"] == "bidirectional" and bidi_index["block_size"] is None
    causal_index = read_index(tmp_path / "causal_original")
    assert set(bidi_index) == set(causal_index) and bidi_index["members"] == causal_index["members"]
    assert bidi_index["members"] == ["json", "ode_output.safetensors", "pixels.safetensors", "trajectory.safetensors",
                                     "trajectory_sigmas.safetensors", "txt"]
    assert set(bidi[0]) == set(causal["original"][0])


# --- (c) the negative prompt is the unconditional branch -------------------------------------------------------
@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_the_negative_prompt_is_the_unconditional_context(kind, teachers, toy_data, tmp_path, monkeypatch):
    negative = "a white triangle"
    encoded: list[list[str]] = []
    original_forward = ToyTextEncoder.forward

    def recording_forward(self, prompts):
        encoded.append(list(prompts))
        return original_forward(self, prompts)

    monkeypatch.setattr(ToyTextEncoder, "forward", recording_forward)
    index, samples = export(teachers[f"{kind}_file"], toy_data / "train", tmp_path / "neg", negative_prompt=negative)
    captions = [s["caption"] for s in samples]
    assert [p for p in encoded if negative in p] == [[negative], [negative] * 2, [negative]]  # check, then 2 + 1
    assert all(set(p) <= set(captions) for p in encoded if negative not in p)
    assert all("" not in p for p in encoded)
    assert index["negative_prompt"] == negative
    monkeypatch.setattr(ToyTextEncoder, "forward", original_forward)
    if kind == "causal":
        check_against_reference(samples, lambda x0: teacher_forcing_reference(generator_of(teachers["causal"]), x0),
                                negative_prompt=negative)
    else:
        model = teachers["bidirectional"].model.eval()
        check_against_reference(samples, lambda x0: lambda x, s, c: model(x, torch.full((x.shape[0],), s), c),
                                negative_prompt=negative)
    _, plain = export(teachers[f"{kind}_file"], toy_data / "train", tmp_path / "plain", num_videos=1)
    assert (plain[0]["ode_output"].float() - samples[0]["ode_output"].float()).abs().max() > 1e-2


# --- layout and weights of the causal teacher ------------------------------------------------------------------
def test_block_size_and_ema_choice(toy_data, tmp_path):
    module = causal_module(block_size=2, ema=True, seed=11)
    path = export_weights(module, tmp_path / "ema.safetensors")
    messages = []
    index, default = export(path, toy_data / "train", tmp_path / "default", num_videos=2, log=messages.append)
    assert (index["block_size"], index["teacher_weights"]) == (2, "generator_ema")
    assert any("EMA weights" in m and "blocks of 2" in m for m in messages), messages
    check_against_reference(default, lambda x0: teacher_forcing_reference(generator_of(module, 2, ema=True), x0))
    raw_index, raw = export(path, toy_data / "train", tmp_path / "raw", num_videos=2, use_ema=False)
    assert raw_index["teacher_weights"] == "generator"
    check_against_reference(raw, lambda x0: teacher_forcing_reference(generator_of(module, 2, ema=False), x0))
    one_index, framewise = export(path, toy_data / "train", tmp_path / "framewise", num_videos=2, block_size=1)
    assert (one_index["block_size"], one_index["teacher_weights"]) == (1, "generator_ema")
    check_against_reference(framewise, lambda x0: teacher_forcing_reference(generator_of(module, 1, ema=True), x0))

    cfg = build_parser().parse_args(["trajectories", "--teacher", str(path), "--source", "s", "--out", "o",
                                     "--block-size", "2", "--ema", "false", "--negative-prompt", "a red circle"])
    assert (cfg.trajectories.block_size, cfg.trajectories.use_ema, cfg.trajectories.negative_prompt) == (2, False,
                                                                                                        "a red circle")
    defaults = build_parser().parse_args(["trajectories", "--teacher", "t", "--source", "s", "--out", "o"]).trajectories
    # negative prompt None: the source's cached one (`data encode`), else "" (toy sources cache none)
    assert (defaults.block_size, defaults.use_ema, defaults.negative_prompt, defaults.guidance_scale) == (None, None,
                                                                                                          None, 4.0)
    assert build_parser().parse_args(["trajectories", "--teacher", "t", "--source", "s", "--out", "o",
                                      "--ema", "true"]).trajectories.use_ema is True


def test_a_run_config_without_causal_diffusion_gives_a_warning(teachers, toy_data, tmp_path):
    run = tmp_path / "version_0"
    run.mkdir()
    shutil.copy(teachers["causal_file"], run / "weights.safetensors")
    (run / "config.yaml").write_text("model:\n  init_args:\n    objectives:\n"
                                     "    - class_path: oneforcing.objectives.dmd.DMD\n      init_args: {weight: 1.0}\n")
    messages = []
    export(run / "weights.safetensors", toy_data / "train", tmp_path / "out", num_videos=1, log=messages.append)
    assert any("Warning" in m and "CausalDiffusion(teacher_forcing: true)" in m for m in messages), messages
    (run / "config.yaml").write_text("model:\n  init_args:\n    objectives:\n"
                                     "    - class_path: oneforcing.objectives.diffusion.CausalDiffusion\n"
                                     "      init_args: {teacher_forcing: true}\n")
    messages.clear()
    export(run / "weights.safetensors", toy_data / "train", tmp_path / "out", num_videos=1, log=messages.append)
    assert not any("Warning" in m for m in messages), messages


# --- (d) bad inputs fail before sampling -----------------------------------------------------------------------
def test_bad_inputs_fail_clearly_before_sampling(teachers, toy_data, tmp_path):
    out = tmp_path / "never"
    causal, bidirectional, source = teachers["causal_file"], teachers["bidirectional_file"], toy_data / "train"

    state = load_file(causal)
    meta = {"module": "DistillationModule", "hparams": json.dumps(dict(teachers["causal"].hparams))}
    no_generator = tmp_path / "no_generator.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("generator")}, no_generator, metadata=meta)
    with pytest.raises(ValueError, match="holds no causal generator weights.*causal_forcing_ar_diffusion"):
        export(no_generator, source, out)

    captions_only = tmp_path / "captions_only"
    write_shards([encode_sample("00000000", {}, "a red circle moving left slowly", {})], captions_only, 16)
    with pytest.raises(ValueError, match="carries no pixels or latents.*--source"):
        export(causal, captions_only, out)
    with pytest.raises(ValueError, match="holds no EMA.*--ema false"):
        export(causal, source, out, use_ema=True)
    with pytest.raises(ValueError, match="block layout does not fit the source's 8 latent frames.*--block-size"):
        export(causal, source, out, block_size=3)
    with pytest.raises(ValueError, match="holds a TeacherModule"):
        export(bidirectional, source, out, block_size=1)
    with pytest.raises(ValueError, match="outside the toy vocabulary"):
        export(causal, source, out, negative_prompt="blurry, low quality")
    assert not out.exists(), "nothing may be written before the inputs are checked"


# --- (e) the whole toy Causal Forcing chain through the CLI ----------------------------------------------------
@pytest.mark.slow
def test_causal_forcing_chain_runs_through_the_cli(teachers, toy_data, tmp_path):
    """Stage 1 (AR diffusion, teacher forcing) → causal trajectories → causal ODE init → DMD, 2 iterations each."""
    configs, runs = REPO_ROOT / "configs" / "toy", tmp_path / "runs"
    teacher = export_weights(teachers["bidirectional"], tmp_path / "teacher.safetensors")

    def fit(config: str, name: str, data: Path, *extra: str) -> Path:
        result = run_cli(["fit", "--config", str(configs / config), *tiny_backbone_args(),
                          "--model.init_args.num_frames", str(TINY_FRAMES), "--model.init_args.frame_size",
                          str(TINY_SIZE), "--data.init_args.root", str(data), "--data.init_args.batch_size", "2",
                          "--data.init_args.val_samples", "2", "--trainer.max_steps", "2",
                          "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
                          "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name,
                          *extra], timeout=300)
        assert result.returncode == 0, describe(result)
        assert "`Trainer.fit` stopped: `max_steps=2` reached." in result.stdout + result.stderr
        weights = runs / name / "version_0" / "weights.safetensors"
        assert weights.is_file()
        return weights

    stage1 = fit("causal_forcing_ar_diffusion.yaml", "ar_diffusion", toy_data,
                 "--model.init_args.teacher_weights", str(teacher))
    result = run_cli(["data", "trajectories", "--teacher", str(stage1), "--source", str(toy_data / "train"),
                      "--out", str(tmp_path / "causal_ode" / "train"), "--num-videos", "4", "--steps", str(STEPS),
                      "--guidance-scale", "6", "--batch-size", "4"], timeout=300)
    assert result.returncode == 0, describe(result)
    assert "DistillationModule → causal teacher forcing" in result.stdout, describe(result)
    assert "Wrote 4 causal_teacher_forcing trajectories" in result.stdout, describe(result)
    shutil.copytree(tmp_path / "causal_ode" / "train", tmp_path / "causal_ode" / "val")  # a val split for the run
    ode = fit("ode_init_causal_forcing.yaml", "ode_init", tmp_path / "causal_ode",
              "--model.init_args.generator_weights", str(stage1))
    fit("causal_forcing_dmd.yaml", "dmd", toy_data, "--model.init_args.teacher_weights", str(teacher),
        "--model.init_args.generator_weights", str(ode))


def test_the_exact_teachers_trajectories_end_on_bank_videos_of_their_caption(toy_data, tmp_path):
    """--teacher exact: the ODE of the bank's posterior mean lands on one of the caption's bank videos."""
    from oneforcing.toy.exact_bank import caption_videos

    source = copy_split(toy_data / "train", tmp_path / "src", 3)
    index, samples = export(EXACT_TEACHER, source, tmp_path / "out", num_videos=3, bank_size=3, bank_seed=7)
    assert index["teacher_kind"] == "exact" and index["teacher_weights"] == "bank of 3 videos per caption, seed 7"
    codec = SpaceToDepthCodec(factor=2)
    for sample in samples:
        bank = codec.encode(caption_videos(sample["caption"], 3, seed=7, num_frames=TINY_FRAMES, frame_size=TINY_SIZE))
        distances = (bank - sample["ode_output"].float()).flatten(1).norm(dim=1)  # to each bank video (3,)
        between = (bank[0] - bank[1]).norm()
        assert float(distances.min()) < 0.05 * float(between), "the output is one of the caption's bank videos"
    with pytest.raises(ValueError, match="the exact teacher has neither"):
        export(EXACT_TEACHER, source, tmp_path / "bad", num_videos=1, bank_size=2, use_ema=True)
    textured_two = tmp_path / "two"
    write_toy_dataset(textured_two, 4, 0, 0, num_frames=TINY_FRAMES, size=TINY_SIZE, samples_per_shard=4,
                      progress=False, max_objects=2)
    with pytest.raises(ValueError, match="covers one-object videos.*--max-objects 1"):
        export(EXACT_TEACHER, textured_two / "train", tmp_path / "bad2", num_videos=1, bank_size=2)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_the_exact_teachers_autoregressive_trajectories_are_causal_and_end_on_bank_videos(toy_data, tmp_path):
    """--autoregressive: frame by frame over its own frames; the index says so, outputs are bank videos, and the
    snapshots at σ = 1 are the noise itself (each frame's integration starts there)."""
    from oneforcing.toy.exact_bank import caption_videos

    source = copy_split(toy_data / "train", tmp_path / "src", 2)
    index, samples = export(EXACT_TEACHER, source, tmp_path / "out", num_videos=2, bank_size=3, bank_seed=7,
                            autoregressive=True, guidance_scale=1.0)
    assert index["order"] == "autoregressive"
    codec = SpaceToDepthCodec(factor=2)
    for sample in samples:
        bank = codec.encode(caption_videos(sample["caption"], 3, seed=7, num_frames=TINY_FRAMES, frame_size=TINY_SIZE))
        distances = (bank - sample["ode_output"].float()).flatten(1).norm(dim=1)
        assert float(distances.min()) < 0.05 * float((bank[0] - bank[1]).norm())
        noise = torch.randn(sample["ode_output"].shape, generator=torch.Generator().manual_seed(sample["attributes"]["noise_seed"]))
        assert torch.allclose(sample["trajectory"][0].float(), noise, atol=1e-2), "every frame starts from its noise"
    assert read_split(tmp_path / "out")[0]["order"] == "autoregressive"
    joint, _ = export(EXACT_TEACHER, source, tmp_path / "joint", num_videos=1, bank_size=3, bank_seed=7)
    assert joint["order"] == "joint"
    with pytest.raises(ValueError, match="--autoregressive samples the exact teacher"):
        export(tmp_path / "teacher.safetensors", source, tmp_path / "bad", num_videos=1, autoregressive=True)
    assert not (tmp_path / "bad").exists()


def test_a_diffusion_trained_generator_samples_along_its_ode(monkeypatch, teachers):
    """AR diffusion (CausalDiffusion) makes a diffusion model: generate() and evaluate integrate its ODE, and so does
    its export, rebuilt without objectives; a module of few-step objectives keeps the re-noising update; a bad
    name is refused."""
    from oneforcing.lightning_modules.checkpoints import load_trained_module
    from oneforcing.objectives.trajectory import TrajectoryDistillation
    from oneforcing.sampling import streaming

    module = causal_module()
    assert module.solver == "euler"
    assert DistillationModule([TrajectoryDistillation()], backbone=TINY, ema_start=None).solver == "renoise"
    assert load_trained_module(teachers["causal_file"]).solver == "euler"
    with pytest.raises(ValueError, match="solver='ddim' is not a sampler update"):
        DistillationModule([TrajectoryDistillation()], backbone=TINY, ema_start=None, solver="ddim")
    used = []
    original = streaming.StreamingSampler.__init__

    def spy(self, *args, solver="renoise", **kwargs):
        used.append(solver)
        original(self, *args, solver=solver, **kwargs)

    monkeypatch.setattr(streaming.StreamingSampler, "__init__", spy)
    module.generate(["a red circle"], num_steps=2)
    assert used == ["euler"]
