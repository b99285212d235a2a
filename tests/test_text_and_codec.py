"""The toy text encoder and the space-to-depth latent codec."""

from __future__ import annotations

import pytest
import torch

from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.text_encoder import ToyTextEncoder
from oneforcing.toy.vocabulary import VOCABULARY


def test_toy_encoder_is_deterministic_and_zero_padded():
    encoder = ToyTextEncoder()
    prompts = ["a large red circle moving left quickly", "a small blue square moving up slowly and a small "
               "green triangle moving down quickly"]
    context = encoder(prompts)
    assert context.shape == (2, encoder.max_tokens, len(VOCABULARY) + encoder.max_tokens)
    assert encoder.dim == 46 == context.shape[-1]  # the toy backbone's text_dim
    assert torch.equal(context, ToyTextEncoder()(prompts))
    n_words = len(prompts[0].split())
    assert torch.all(context[0, n_words:] == 0)  # padding rows are zero, as Wan expects
    assert torch.all(context[0, :n_words].sum(dim=-1) == 2)  # one word bit + one position bit per token
    red = VOCABULARY.index("red")
    assert context[0, 2, red] == 1 and context[0, 2, len(VOCABULARY) + 2] == 1


def test_word_order_and_case_matter_as_expected():
    encoder = ToyTextEncoder()
    a = encoder(["a red circle and a blue square"])
    b = encoder(["a blue circle and a red square"])
    assert not torch.equal(a, b)  # position codes bind colours to objects
    assert torch.equal(encoder(["A Red Circle"]), encoder(["a red circle"]))


def test_empty_prompt_is_all_zeros():
    context = ToyTextEncoder()(["", "a red circle"])
    assert torch.all(context[0] == 0) and context[1].abs().sum() > 0


def test_unknown_word_names_the_word_and_the_vocabulary():
    with pytest.raises(ValueError) as error:
        ToyTextEncoder()(["a large pink circle moving sideways"])
    message = str(error.value)
    assert "['pink', 'sideways']" in message
    for word in VOCABULARY:
        assert word in message


def test_too_long_prompt_is_rejected():
    encoder = ToyTextEncoder(max_tokens=4)
    assert encoder(["a red circle moving"]).shape == (1, 4, len(VOCABULARY) + 4)
    with pytest.raises(ValueError, match="has 5 words; the toy encoder takes at most 4"):
        encoder(["a red circle moving left"])


def test_space_to_depth_round_trip_is_exact():
    codec = SpaceToDepthCodec(factor=2)
    pixels = torch.rand(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = codec.encode(pixels)
    assert latents.shape == (2, 5, 12, 16, 16) and codec.latent_channels == 12
    assert torch.equal(codec.decode(latents), pixels)
    # channel c·4 + p·2 + q of latent pixel (h, w) is image pixel (2h + p, 2w + q) of colour channel c
    assert latents[1, 3, 1 * 4 + 1 * 2 + 0, 5, 7] == pixels[1, 3, 1, 11, 14]


def test_space_to_depth_rejects_indivisible_frames():
    with pytest.raises(ValueError, match="not divisible by the codec factor 2"):
        SpaceToDepthCodec(factor=2).encode(torch.zeros(1, 1, 3, 31, 32))


def test_the_toy_codec_follows_the_backbone_channels():
    """A toy backbone's in_channels records its codec, so exported weights rebuild with it: 12 -> ×2, 48 -> ×4."""
    from oneforcing.lightning_modules.teacher import TeacherModule
    from oneforcing.toy.codec import SpaceToDepthCodec

    assert [SpaceToDepthCodec.matching(c).factor for c in (3, 12, 27, 48, 16)] == [1, 2, 3, 4, 2]
    tiny = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=16, text_dim=46)
    module = TeacherModule(backbone=dict(tiny, in_channels=48, out_channels=48), frame_size=16)
    assert module.codec.factor == 4 and module.codec.encode(torch.zeros(1, 2, 3, 16, 16)).shape == (1, 2, 48, 4, 4)
    with pytest.raises(ValueError, match="in_channels"):
        TeacherModule(backbone=dict(tiny, in_channels=16, out_channels=16))  # no toy codec has 16 channels
