"""scripts/side_by_side.py: one row per checkpoint, and a `world` row of the toy world's own videos."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT as REPO, load_script

from oneforcing.toy.exact_bank import caption_videos

STUDENT = REPO / "assets" / "study" / "sf_dmd_1step_seed0.safetensors"  # kept by the study
PROMPTS = ["a large red circle moving right slowly", "a small blue square moving left quickly"]


@pytest.fixture(scope="module")
def script():
    return load_script("side_by_side")


def test_world_row_is_the_bank_video_of_each_prompt_at_the_students_length(script):
    videos = script.side_by_side([("world", "world"), ("student", str(STUDENT))], PROMPTS, seed=2)
    assert videos.shape == (2, 2, 6, 3, 32, 32)  # rows, prompts, the student's 6 frames of 32x32
    for n, prompt in enumerate(PROMPTS):
        assert torch.equal(videos[0, n], caption_videos(prompt, 3, num_frames=6)[2])  # video 2 of the stream
    assert not torch.allclose(videos[0], videos[1])  # the student's row is its own


def test_a_world_row_alone_is_refused(script):
    with pytest.raises(ValueError, match="needs at least one checkpoint row"):
        script.side_by_side([("world", "world")], PROMPTS)
