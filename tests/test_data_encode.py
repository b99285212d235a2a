"""`oneforcing data encode` / `data prompts` on the tiny Wan: what the shards hold, bad videos, resume, the prompt
cache, and training on cached contexts (equal to calling umT5, which is then never called)."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from conftest import GOOD_VIDEOS, USER_PROMPTS, WAN_CLIP, require_real_extra

from oneforcing.commands.encode import encode_videos
from oneforcing.data import datamodule as datamodule_module
from oneforcing.data.datamodule import ShardDataModule
from oneforcing.data.prompt_cache import pad_contexts
from oneforcing.data.shards import decode_sample, read_index
from oneforcing.data.video_folder import source_indices
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.codecs import WanVAECodec
from oneforcing.models.text_encoders import WAN_NEGATIVE_PROMPT, UMT5TextEncoder
from oneforcing.models.tiny_wan import TINY_WAN_BACKBONE
from oneforcing.objectives.dmd import DMD

require_real_extra()


def samples_of(split) -> dict[str, dict]:
    urls = [str(split / s["name"]) for s in read_index(split)["shards"]]
    return {s["caption"]: s for s in map(decode_sample, wds.DataPipeline(wds.SimpleShardList(urls),
                                                                         wds.tarfile_to_samples()))}


def test_encoded_latents_and_embeddings_are_the_codec_and_umt5_of_the_resized_clips(wan_user_data, tiny_wan_dir):
    import imageio.v3 as iio

    split = wan_user_data["latents"] / "train"
    index, samples = read_index(split), samples_of(split)
    assert index["total"] == GOOD_VIDEOS and set(samples) == set(USER_PROMPTS[:GOOD_VIDEOS])
    assert index["kind"] == "videos" and (index["context_length"], index["context_dim"]) == (512, 32)
    # independently: decode, the first 21 frames (source at 8 fps), centre crop 40×48 -> 40×40, resize to 32×32
    frames = iio.imread(wan_user_data["videos"] / "clip0.mp4", plugin="FFMPEG", index=None)[:21]  # (F, 40, 48, 3)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, :, 4:44])).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True).round().clamp(0, 255) / 127.5 - 1
    expected = WanVAECodec(str(tiny_wan_dir / "vae")).encode(x[None])[0].half()  # (6, 16, 4, 4)
    sample = samples[USER_PROMPTS[0]]
    assert sample["latents"].shape == (6, 16, 4, 4) and torch.equal(sample["latents"], expected)
    context = UMT5TextEncoder(str(tiny_wan_dir / "text_encoder"), dim=32)([USER_PROMPTS[0]])  # (1, 512, 32) bf16
    stored = sample["prompt_embedding"]
    assert 1 < stored.shape[0] < 512 and stored.dtype == torch.bfloat16  # padding rows trimmed
    assert torch.equal(pad_contexts([stored], 512), context)
    assert sample["attributes"] == {"video": "clip0.mp4", "fps": 8.0}


def test_frame_rate_resampling_picks_the_frame_on_screen():
    assert source_indices(5, source_fps=8, fps=16) == [0, 0, 1, 1, 2]  # slower source: frames repeat
    assert source_indices(4, source_fps=30, fps=16) == [0, 1, 3, 5]


def test_bad_videos_are_skipped_counted_and_reported_with_their_reason(wan_user_data):
    report = json.loads((wan_user_data["latents"] / "train" / "report.json").read_text())
    assert (report["inputs"], report["encoded"], report["skipped"]) == (GOOD_VIDEOS + 4, GOOD_VIDEOS, 4)
    reasons = {s["video"]: s["reason"] for s in report["skipped_inputs"]}
    assert reasons == {"broken.mp4": "unreadable", "short.mp4": "too_short", "tall.mp4": "aspect_ratio",
                       "uncaptioned.mp4": "no_caption"}
    detail = {s["video"]: s["detail"] for s in report["skipped_inputs"]}
    assert "10 frames at 8 fps; the clip needs 21 frames" in detail["short.mp4"]
    assert "32x96 would lose 67% to the centre crop" in detail["tall.mp4"]


def test_a_killed_encode_resumes_to_byte_identical_shards(wan_user_data, tiny_wan_dir, tmp_path, monkeypatch):
    out = tmp_path / "train"
    args = dict(videos=str(wan_user_data["videos"]), model_dir=str(tiny_wan_dir), **WAN_CLIP, samples_per_shard=2,
                progress=False)
    calls, original = [], WanVAECodec.encode

    def dies_on_the_third_clip(self, pixels):
        calls.append(1)
        if len(calls) == 3:  # inputs sorted: [broken, clip0] [clip1, clip2] ...: dies inside the second shard
            raise KeyboardInterrupt
        return original(self, pixels)

    monkeypatch.setattr(WanVAECodec, "encode", dies_on_the_third_clip)
    with pytest.raises(KeyboardInterrupt):
        encode_videos(out=str(out), **args)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]  # no half shard, no temporary left
    assert not list(out.glob(".*.tmp")) and not (out / "index.json").exists()
    monkeypatch.setattr(WanVAECodec, "encode", original)
    with pytest.raises(ValueError, match="written with other settings \\(fps differ"):
        encode_videos(out=str(out), **dict(args, fps=16.0))
    index, report = encode_videos(out=str(out), **dict(args, workers=2))  # resumed, decoding in 2 processes
    reference = wan_user_data["latents"] / "train"
    assert index["shards"] == read_index(reference)["shards"] and report["skipped"] == 4
    for shard in index["shards"]:
        assert (out / shard["name"]).read_bytes() == (reference / shard["name"]).read_bytes()


def test_a_prompts_only_split_streams_with_its_cached_negative_prompt(wan_user_data, tiny_wan_dir):
    data = ShardDataModule(root=str(wan_user_data["prompts"]), batch_size=2, num_workers=0, shuffle_buffer=4)
    data.setup("fit")
    assert data.train_index["kind"] == "prompts" and data.train_index["total"] == len(USER_PROMPTS)
    batch = next(iter(data.epoch_loader(0)))
    assert set(batch) >= {"caption", "prompt_embedding"} and "latents" not in batch and "pixels" not in batch
    encoder = UMT5TextEncoder(str(tiny_wan_dir / "text_encoder"), dim=32)
    live = encoder(batch["caption"]).float()
    cached = pad_contexts(batch["prompt_embedding"], 512)
    assert torch.equal(cached, live)
    text, negative = data.cached_negative_prompt()
    assert text == WAN_NEGATIVE_PROMPT and torch.equal(pad_contexts([negative], 512), encoder([WAN_NEGATIVE_PROMPT]))


def _fit_dmd(tiny_wan_dir, root) -> DistillationModule:
    torch.manual_seed(0)
    module = DistillationModule(objectives=[DMD(guidance_scale=4.0)], backbone=TINY_WAN_BACKBONE,
                                model_dir=str(tiny_wan_dir), num_frames=2, frame_size=32, generator_update_every=1,
                                ema_start=None, negative_prompt=WAN_NEGATIVE_PROMPT, generator_lr=1e-3, critic_lr=1e-3)
    data = ShardDataModule(root=str(root), batch_size=2, num_workers=0, shuffle_buffer=4)
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0).fit(module, datamodule=data)
    return module


def test_training_on_cached_contexts_equals_calling_the_text_encoder(wan_user_data, tiny_wan_dir, monkeypatch):
    original_forward, original_collate = UMT5TextEncoder.forward, datamodule_module.collate

    def refuse(self, prompts):
        raise AssertionError(f"umT5 was called on {prompts}")

    monkeypatch.setattr(UMT5TextEncoder, "forward", refuse)
    cached = _fit_dmd(tiny_wan_dir, wan_user_data["prompts"])  # umT5 never runs: captions and negative cached
    assert int(cached.iteration) == 2
    monkeypatch.setattr(UMT5TextEncoder, "forward", original_forward)
    monkeypatch.setattr(ShardDataModule, "cached_negative_prompt", lambda self: None)
    monkeypatch.setattr(datamodule_module, "collate",
                        lambda samples: {k: v for k, v in original_collate(samples).items() if k != "prompt_embedding"})
    live = _fit_dmd(tiny_wan_dir, wan_user_data["prompts"])
    for role in ("generator", "critic"):
        a, b = getattr(cached, role).state_dict(), getattr(live, role).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), role
    start = DistillationModule(objectives=[DMD()], backbone=TINY_WAN_BACKBONE, model_dir=str(tiny_wan_dir),
                               num_frames=2, frame_size=32, negative_prompt=WAN_NEGATIVE_PROMPT)
    start.configure_model()
    assert any(not torch.equal(v, start.generator.state_dict()[k]) for k, v in cached.generator.state_dict().items())


def test_a_cache_with_another_negative_prompt_is_not_used_and_says_so(wan_user_data, tiny_wan_dir):
    module = DistillationModule(objectives=[DMD()], backbone=TINY_WAN_BACKBONE, model_dir=str(tiny_wan_dir),
                                num_frames=2, frame_size=32, negative_prompt="blurry", generator_update_every=1)
    data = ShardDataModule(root=str(wan_user_data["prompts"]), batch_size=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="cache the negative prompt .* but model.init_args.negative_prompt is 'blurry'"):
        trainer.fit(module, datamodule=data)
    encoder = UMT5TextEncoder(str(tiny_wan_dir / "text_encoder"), dim=32)
    assert torch.equal(module.uncond_context(1), encoder(["blurry"]))  # the module's own negative prompt, encoded
