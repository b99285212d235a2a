"""A Wan2.1 diffusers folder as one setting: layout checks, the Wan VAE codec and umT5 on a tiny folder, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import require_real_extra
from safetensors.torch import load_file

from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.codecs import WanVAECodec
from oneforcing.models.text_encoders import WAN_NEGATIVE_PROMPT, UMT5TextEncoder
from oneforcing.models.tiny_wan import TINY_WAN_BACKBONE, tiny_wan_config
from oneforcing.models.wan import WanBackbone
from oneforcing.models.wan_components import wan_components
from oneforcing.models.wan_folder import WanModelFolder
from oneforcing.objectives.dmd import DMD

require_real_extra()


def test_tiny_folder_has_the_wan21_layout(tiny_wan_dir):
    folder = WanModelFolder(tiny_wan_dir)
    assert (folder.transformer / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder.vae / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder.text_encoder / "model.safetensors").is_file() and (folder.tokenizer / "tokenizer.json").is_file()
    assert folder.config("transformer")["_class_name"] == "WanTransformer3DModel"
    assert folder.config("vae")["z_dim"] == 16 and folder.config("text_encoder")["architectures"] == ["UMT5EncoderModel"]
    assert folder.problems(backbone=tiny_wan_config(), latent_channels=16, spatial_factor=8, text_dim=32) == []


def test_wan_vae_codec_round_trip_and_per_channel_normalisation(tiny_wan_dir):
    from diffusers import AutoencoderKLWan

    codec = WanVAECodec(str(tiny_wan_dir / "vae"), dtype="float32")
    pixels = torch.rand(2, 5, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = codec.encode(pixels)
    assert latents.shape == (2, 2, 16, 4, 6)  # 1 + 4k frames -> 1 + k, 8x spatial, Wan2.1's 16 channels
    config = json.loads((tiny_wan_dir / "vae" / "config.json").read_text())
    mean = torch.tensor(config["latents_mean"]).view(1, 16, 1, 1, 1)
    std = torch.tensor(config["latents_std"]).view(1, 16, 1, 1, 1)
    vae = AutoencoderKLWan.from_pretrained(tiny_wan_dir / "vae", local_files_only=True)
    with torch.no_grad():
        raw = vae.encode(pixels.permute(0, 2, 1, 3, 4)).latent_dist.mode()  # (B, C, F', h, w)
        expected = ((raw - mean) / std).permute(0, 2, 1, 3, 4)
        decoded = vae.decode(raw).sample.clamp(-1, 1).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(latents, raw.permute(0, 2, 1, 3, 4), atol=1e-2)  # the normalisation is applied
    video = codec.decode(latents)
    assert video.shape == pixels.shape
    torch.testing.assert_close(video, decoded, rtol=1e-4, atol=1e-4)
    assert codec.state_dict() == {}  # the frozen VAE stays out of checkpoints
    with pytest.raises(ValueError, match="encodes 1 \\+ 4k frames; got 4"):
        codec.encode(pixels[:, :4])


def test_umt5_encoder_zeroes_padding_and_matches_the_model(tiny_wan_dir):
    from transformers import AutoTokenizer, UMT5EncoderModel

    encoder = UMT5TextEncoder(str(tiny_wan_dir / "text_encoder"), max_length=40, dtype="float32", dim=32)
    prompts = ["a red circle moving left", "a cat"]
    context = encoder(prompts)
    assert context.shape == (2, 40, 32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_wan_dir / "tokenizer")  # the sibling folder was used
    tokens = tokenizer(prompts, padding="max_length", max_length=40, truncation=True, return_tensors="pt")
    lengths = tokens.attention_mask.sum(1).tolist()
    assert 2 < lengths[1] < lengths[0] < 40
    model = UMT5EncoderModel.from_pretrained(tiny_wan_dir / "text_encoder")
    with torch.no_grad():
        hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    for b, n in enumerate(lengths):
        torch.testing.assert_close(context[b, :n], hidden[b, :n], rtol=1e-5, atol=1e-5)
        assert torch.all(context[b, n:] == 0) and torch.all(context[b, :n].abs().sum(-1) > 0)
        assert hidden[b, n:].abs().sum() > 0  # the model itself does not zero them
    assert set(encoder.state_dict()) == set()  # the frozen umT5 stays out of checkpoints


def test_model_dir_initialises_every_role_and_the_codec_and_text_encoder(tiny_wan_dir):
    module = DistillationModule(objectives=[DMD(guidance_scale=2.0)], backbone=TINY_WAN_BACKBONE,
                                model_dir=str(tiny_wan_dir), num_frames=2, frame_size=32, ema_start=None,
                                negative_prompt=WAN_NEGATIVE_PROMPT)
    assert isinstance(module.codec, WanVAECodec) and module.codec.path == str(tiny_wan_dir / "vae")
    assert isinstance(module.text_encoder, UMT5TextEncoder) and module.text_encoder.dim == 32
    module.configure_model()
    weights = load_file(tiny_wan_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    for role in (module.generator, module.teacher, module.critic):
        own = role.transformer.state_dict()
        assert set(own) == set(weights) and all(torch.equal(own[k], weights[k]) for k in weights)
    assert module.encode_prompts(["a cat", WAN_NEGATIVE_PROMPT]).shape == (2, 512, 32)
    assert not any(k.startswith(("codec.", "text_encoder.")) for k in module.state_dict())


# --- bad input ------------------------------------------------------------------------------------------
def _module(model_dir, **overrides):
    kwargs = dict(objectives=[DMD(guidance_scale=2.0)], backbone=TINY_WAN_BACKBONE, model_dir=str(model_dir),
                  num_frames=2, frame_size=32, negative_prompt=WAN_NEGATIVE_PROMPT)
    return DistillationModule(**{**kwargs, **overrides})


def test_a_folder_that_is_not_a_wan21_layout_names_the_missing_parts(tmp_path):
    bad = tmp_path / "stable-diffusion"
    (bad / "unet").mkdir(parents=True)
    (bad / "vae").mkdir()
    (bad / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    with pytest.raises(ValueError) as error:
        _module(bad)
    message = str(error.value)
    assert "has no transformer/ folder: it is not a Wan2.1 diffusers folder" in message
    assert "holds a AutoencoderKL, not a AutoencoderKLWan" in message
    assert "has no text_encoder/ folder" in message and "has no tokenizer/ folder" in message
    with pytest.raises(FileNotFoundError, match="transformer/, vae/, text_encoder/ and tokenizer/"):
        WanBackbone(tiny_wan_config()).load_weights(bad)
    missing = _module(tmp_path / "nowhere", backbone=dict(TINY_WAN_BACKBONE, text_dim=4096))  # builds (configs validate without weights), fails when weights load
    with pytest.raises(FileNotFoundError, match="nowhere do not exist; check the path"):
        missing.configure_model()


def _copy(tiny_wan_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_wan_dir, copy)
    return copy


def test_a_vae_with_other_latent_channels_is_refused(tiny_wan_dir, tmp_path):
    from diffusers import AutoencoderKLWan

    folder = _copy(tiny_wan_dir, tmp_path)
    shutil.rmtree(folder / "vae")
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4,
                     latents_std=[1.0] * 4).save_pretrained(folder / "vae")
    with pytest.raises(ValueError, match="has 4 latent channels \\(z_dim\\) but the codec and backbone expect 16: it "
                                         "is not Wan2.1's VAE"):
        _module(folder)
    with pytest.raises(ValueError, match="has 4 latent channels, the config says 16: it is not Wan2.1's VAE"):
        WanVAECodec(str(folder / "vae"), dtype="float32").encode(torch.zeros(1, 1, 3, 32, 32))


def test_a_backbone_that_does_not_fit_the_transformer_names_the_field(tiny_wan_dir):
    with pytest.raises(ValueError, match="backbone.num_layers=3 but .* has 2; set backbone.num_layers: 2"):
        _module(tiny_wan_dir, backbone=dict(TINY_WAN_BACKBONE, num_layers=3))


@pytest.mark.parametrize("rows, expected", [(50, "tokens but the text encoder .* has 50 embedding rows"),
                                            (2000, "fewer than half of the text encoder's 2000 rows")])
def test_a_tokenizer_that_does_not_match_the_text_encoder_is_refused(tiny_wan_dir, tmp_path, rows, expected):
    from transformers import UMT5Config, UMT5EncoderModel

    from oneforcing.models.tiny_wan import TINY_UMT5

    folder = _copy(tiny_wan_dir, tmp_path)
    shutil.rmtree(folder / "text_encoder")
    UMT5EncoderModel(UMT5Config(vocab_size=rows, **TINY_UMT5)).save_pretrained(folder / "text_encoder")
    codec, encoder = wan_components(folder, dtype="float32")
    with pytest.raises(ValueError, match=f"Tokenizer and text encoder do not match: the tokenizer .*{expected}.*use "
                                         "the tokenizer that ships with this text encoder"):
        encoder(["a cat"])
