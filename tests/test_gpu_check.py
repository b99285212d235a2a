"""benchmarks/gpu_check.py at toy sizes on the CPU (``--cpu-smoke``): every section's code runs, so that the one-call
GPU check cannot rot between the sessions that are lent a GPU."""

import json
import sys

import pytest
from conftest import REPO_ROOT, load_script


@pytest.mark.slow
def test_every_section_runs_at_toy_sizes(tmp_path, monkeypatch):
    check = load_script("gpu_check", "benchmarks")
    out = tmp_path / "smoke.json"
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--cpu-smoke", "--no-compile", "--out", str(out)])
    check.main()
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert all(s["ok"] for s in sections.values()) and set(sections) == {"chain", "attention", "streaming", "training"}
    assert sections["chain"]["iterations"] == 2 and sections["chain"]["export"] and sections["chain"]["sample_finite"]
    rows = sections["attention"]["rows"]
    assert rows and all(row["max_abs_difference"] < 1e-5 for row in rows), rows  # flex and dense agree
    assert sections["streaming"]["eager"]["fps"] > 0 and sections["streaming"]["eager"]["first_frame_ms"] > 0
    for side in ("generator", "critic"):
        assert sections["training"][side]["predicted_activations_gib"] > 0 and sections["training"][side]["loss"] > 0


def test_without_a_gpu_it_says_how_to_run_it(monkeypatch):
    check = load_script("gpu_check", "benchmarks")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    monkeypatch.setattr(check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here.*--cpu-smoke"):
        check.main()


def test_streaming_limit_counts_the_wan_students_flops_in_closed_form():
    """Two latent frames of the 1.3B student at 480×832, 1 step + context pass each: the FLOPs are about
    2 · parameters · tokens per pass (the linear layers), two passes per frame, plus attention that grows with the
    frames already cached."""
    limit = load_script("streaming_limit", "benchmarks")
    mean, per_block = limit.flops_per_frame(frames=2, steps=1)
    linear = 2 * 1.42e9 * 1560 * 2  # 2·N·T per pass, two passes per frame
    assert 0.95 * linear < per_block[0] < 1.3 * linear
    assert per_block[1] > per_block[0]  # the second frame attends to the first one's keys too
    assert mean == pytest.approx(sum(per_block) / 2)
