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
