"""benchmarks/word_use.py, the probe of whether a student reads a caption word: its swap and its loss ratio."""

import torch
from conftest import load_script

from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.toy.world import make_video

STUDENT = "assets/study/of_framewise_1step_ffe_seed0.safetensors"


def test_swapped_replaces_one_attribute_word():
    probe = load_script("word_use", "benchmarks")
    caption = "a large red circle moving left quickly"
    assert probe.swapped(caption, "direction", "up") == "a large red circle moving up quickly"
    assert probe.swapped(caption, "colour", "blue") == "a large blue circle moving left quickly"
    assert probe.swapped(caption, "speed", "slowly") == "a large red circle moving left slowly"


def test_a_word_the_student_reads_raises_its_loss_when_swapped_and_the_own_caption_does_not():
    """The study's student reads colour (measured: 4.5× the loss with another colour at σ = 0.3 on 32 videos);
    the same captions give the same losses (the probe's noise is fixed)."""
    probe = load_script("word_use", "benchmarks")
    module = load_trained_module(STUDENT).eval()
    videos = [make_video(777, i, num_frames=6) for i in range(6)]
    pixels = torch.stack([torch.from_numpy(v.pixels).float() / 127.5 - 1 for v in videos])
    captions = [v.caption for v in videos]
    own = probe.frame_losses(module, pixels, captions, 0, (0.3, 0.9))
    assert own.shape == (2, 6) and torch.equal(own, probe.frame_losses(module, pixels, captions, 0, (0.3, 0.9)))
    other = [probe.swapped(c, "colour", "green" if "green" not in c else "red") for c in captions]
    wrong = probe.frame_losses(module, pixels, other, 0, (0.3, 0.9))
    assert (wrong.mean(1) / own.mean(1))[0] > 1.5
