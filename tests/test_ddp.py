"""Two-process DDP on CPU (gloo) through the real CLI (CPU tests use 2 processes on gloo)."""

from __future__ import annotations

import pytest
from conftest import describe, run_cli, tiny_fit_args

pytestmark = pytest.mark.engines


def test_two_process_ddp_fit_on_cpu(toy_data, tmp_path):
    # Plain `ddp` works on CPU: Lightning's subprocess launcher re-runs this same command line
    # (`python -m oneforcing.cli fit ...`) for rank 1 and picks gloo for the CPU accelerator, so no
    # `ddp_spawn` or environment tweaks are needed. The timeout turns a collective that only one rank
    # enters (e.g. `trainer.log_dir`, a broadcast under DDP, read on rank 0 only) into a failure, not a hang.
    args = tiny_fit_args(toy_data, tmp_path, name="ddp", max_steps=3, val_samples=8) + [
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
    ]
    result = run_cli(args, timeout=240)
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "`Trainer.fit` stopped: `max_steps=3` reached." in output
    run = tmp_path / "ddp" / "version_0"
    assert (run / "weights.safetensors").stat().st_size > 10_000
    assert (run / "samples" / "step_000003.gif").is_file()
    assert not (tmp_path / "ddp" / "version_1").exists()  # rank 1 logged into rank 0's version, not its own
