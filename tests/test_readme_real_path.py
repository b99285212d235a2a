"""The README's "Your own model and data" commands run, as written, on the tiny Wan folder the first one makes.

Only what a laptop cannot hold is rewritten: the 1.3B folder's path becomes the tiny folder's, the 81-frame 480×832
clip becomes 21 frames of 32×32, and the users' videos and prompt file are written first. Every command then runs
through ``oneforcing``'s own entry point in a scratch directory, and what it promises to write is checked.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

from conftest import REPO_ROOT, USER_PROMPTS, WAN_CLIP, require_real_extra, write_test_videos

from oneforcing.cli import main

require_real_extra("transformers", "sentencepiece", "peft")

README = (REPO_ROOT / "README.md").read_text()
SECTION = README.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
COMMANDS = [line.strip() for block in re.findall(r"```bash\n(.*?)```", SECTION, flags=re.S)
            for line in block.splitlines() if line.strip().startswith("oneforcing ")]
REWRITES = {
    "checkpoints/Wan2.1-T2V-1.3B-Diffusers": "checkpoints/tiny-wan",
    "--num-frames 81 --height 480 --width 832 --fps 16":
        f"--num-frames {WAN_CLIP['num_frames']} --height {WAN_CLIP['height']} --width {WAN_CLIP['width']} "
        f"--fps {WAN_CLIP['fps']:g}",
    "--config configs/": f"--config {REPO_ROOT}/configs/",
}


def rewritten(command: str) -> list[str]:
    for old, new in REWRITES.items():
        command = command.replace(old, new)
    return shlex.split(command)[1:]


def test_the_section_has_the_commands_this_test_runs():
    kinds = [" ".join(shlex.split(c)[1:3]) for c in COMMANDS]
    assert kinds[0] == "tiny-wan --out"  # everything after it reads the folder it writes
    for expected in ("sample --checkpoint", "vbench --checkpoint", "data encode", "data prompts", "data trajectories"):
        assert expected in kinds, kinds
    assert sum(k.startswith("fit --config") for k in kinds) == 3, kinds
    for old in REWRITES:
        assert any(old in c for c in COMMANDS), f"the README no longer contains {old!r}: update REWRITES"


def test_the_readme_real_path_commands_run_on_the_tiny_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["oneforcing"])  # LightningCLI warns when pytest's own arguments are present
    write_test_videos(tmp_path / "my_videos")
    write_test_videos(tmp_path / "my_val_videos")
    (tmp_path / "prompts.txt").write_text("\n".join(USER_PROMPTS[:2]) + "\n")
    for command in COMMANDS:
        args = rewritten(command)
        try:
            main(args)
        except SystemExit as exit_:  # --print_config exits after a full parse and validation
            assert exit_.code in (0, None), f"{command}\n{capsys.readouterr().err[-3000:]}"
    samples = sorted(Path("samples/tiny-wan").iterdir())
    assert samples and all(p.stat().st_size > 0 for p in samples), samples
    assert sorted(p.name for p in Path("vbench_videos").glob("*.mp4")) == sorted(
        f"{p}-0.mp4" for p in USER_PROMPTS[:2])
    for split, kind, count in (("wan_latents/train", "videos", 4), ("wan_latents/val", "videos", 4),
                               ("wan_prompts/train", "prompts", 2)):
        index = json.loads((Path("data") / split / "index.json").read_text())
        assert (index["kind"], index["total"]) == (kind, count), (split, index)
    trajectories = json.loads(Path("data/wan_ode_framewise/train/index.json").read_text())
    assert trajectories["total"] == 4
    report = json.loads(Path("data/wan_latents/train/report.json").read_text())
    assert report["skipped"] == 4  # too short, too tall, no caption, not a video: listed, not fatal
