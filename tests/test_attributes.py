"""Prompt-attribute accuracy: high on real toy videos, and moved the right way by hand-made bad videos."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from oneforcing.toy.attributes import attribute_accuracy, measure_video, one_object_attributes
from oneforcing.toy.world import make_video

NUM_REAL = 48  # one-object real videos (on 612 the measure reads colour 1.00, direction 1.00, shape 1.00)


@pytest.fixture(scope="module")
def real() -> tuple[torch.Tensor, list[str]]:
    """(videos (B, 12, 3, 32, 32) in [-1, 1], one-object captions) rendered by the toy world."""
    toy = [make_video(5, index, max_objects=1) for index in range(NUM_REAL)]
    videos = torch.stack([torch.from_numpy(v.pixels).float() / 127.5 - 1.0 for v in toy])
    return videos, [v.caption for v in toy]


def gaussian_blur(videos: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable spatial blur of (B, F, 3, H, W), replicate padding."""
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma**2))
    k = k / k.sum()
    B, F, C, H, W = videos.shape
    x = videos.reshape(B * F * C, 1, H, W)
    x = nnf.conv2d(nnf.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = nnf.conv2d(nnf.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(B, F, C, H, W)


def test_one_object_attributes_reads_one_object_captions_only():
    assert one_object_attributes("a large red circle moving left quickly") == dict(
        size="large", colour="red", shape="circle", direction="left", speed="quickly"
    )
    two = "a small red circle moving left quickly and a large blue square moving up slowly"
    assert one_object_attributes(two) is None
    assert one_object_attributes("") is None
    assert one_object_attributes("a large pink circle moving left quickly") is None  # not in the vocabulary
    assert one_object_attributes("a large red blue circle moving left quickly") is None  # two colours


def test_real_videos_read_correctly(real):
    videos, captions = real
    scores = attribute_accuracy(videos, captions)
    assert scores["videos"] == NUM_REAL
    assert scores["found"] == 1.0, scores
    assert scores["colour"] >= 0.95 and scores["shape"] >= 0.95, scores
    assert scores["direction"] >= 0.85, scores  # 1.00 on 612; a first step that bounces would read backwards


def test_measure_video_reports_vocabulary_words(real):
    videos, captions = real
    result = measure_video(videos[0])
    wanted = one_object_attributes(captions[0])
    assert result["found"] and {result[k] for k in ("colour", "shape")} <= {wanted["colour"], wanted["shape"]}
    assert 0.0 < result["area"] < 0.3 and result["speed"] > 0, result


def test_two_object_captions_are_skipped(real):
    videos, captions = real
    two = captions[1] + " and " + captions[2]
    scores = attribute_accuracy(videos[:3], [captions[0], two, captions[2]])
    assert scores["videos"] == 2.0, scores
    with pytest.raises(ValueError, match="one caption per video"):
        attribute_accuracy(videos[:3], captions[:2])


def test_frozen_video_has_no_motion_and_no_object(real):
    videos, captions = real
    frozen = videos[:16, :1].expand(-1, videos.shape[1], -1, -1, -1).clone()  # frame 0 held for every frame
    scores = attribute_accuracy(frozen, captions[:16])
    assert scores["found"] == 0.0 and scores["direction"] == 0.0, scores


def test_mirrored_video_reverses_horizontal_direction(real):
    videos, captions = real
    horizontal = [i for i, c in enumerate(captions) if one_object_attributes(c)["direction"] in ("left", "right")]
    scores = attribute_accuracy(videos[horizontal].flip(-1), [captions[i] for i in horizontal])
    assert scores["direction"] <= 0.15 and scores["colour"] >= 0.95, scores


def test_swapped_channels_give_wrong_colours(real):
    videos, captions = real
    # (R, G, B) -> (G, B, R) sends every named colour but white to another name
    coloured = [i for i, c in enumerate(captions) if one_object_attributes(c)["colour"] != "white"]
    scores = attribute_accuracy(videos[coloured][:, :, [1, 2, 0]], [captions[i] for i in coloured])
    assert scores["colour"] == 0.0, scores
    assert scores["shape"] >= 0.9, scores  # the mask itself is unaffected


def test_blur_lowers_shape_accuracy(real):
    videos, captions = real
    sharp = attribute_accuracy(videos, captions)
    blurred = attribute_accuracy(gaussian_blur(videos, 1.5), captions)
    assert blurred["shape"] <= sharp["shape"] - 0.25, (sharp, blurred)
    assert blurred["colour"] >= 0.85, blurred  # colour is read from the object's core


def test_pixel_noise_does_not_break_the_measure(real):
    videos, captions = real
    generator = torch.Generator().manual_seed(0)
    noisy = (videos[:16] + 0.1 * torch.randn(videos[:16].shape, generator=generator)).clamp(-1, 1)
    scores = attribute_accuracy(noisy, captions[:16])
    assert scores["found"] == 1.0 and scores["colour"] >= 0.9 and scores["shape"] >= 0.8, scores


def test_an_object_larger_than_any_of_the_world_is_found_and_reported_wrong_sized():
    """A blob covering ~45 % of the frame is not "not found": it is found, wrong-sized, and its colour reads."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    background = torch.tensor([-0.6, -0.5, -0.7]).view(3, 1, 1)
    red = torch.tensor([230, 40, 40]).float().view(3, 1, 1) / 127.5 - 1
    frames = []
    for f in range(12):
        inside = ((xx - (10.0 + f)) ** 2 + (yy - 16.0) ** 2 <= 12.0**2).float()  # radius 12: ~44 % of 32x32
        frames.append(background * (1 - inside) + red * inside)
    video = torch.stack(frames)  # (12, 3, 32, 32)
    measured = measure_video(video)
    assert measured["found"] and measured["wrong_size"] and measured["area"] > 0.3
    assert measured["colour"] == "red" and measured["direction"] == "right"
    scores = attribute_accuracy(video[None], ["a large red circle moving right slowly"])
    assert scores["found"] == 1.0 and scores["wrong_size"] == 1.0


def test_the_worlds_own_objects_are_never_wrong_sized(real):
    videos, captions = real
    assert attribute_accuracy(videos, captions)["wrong_size"] == 0.0
