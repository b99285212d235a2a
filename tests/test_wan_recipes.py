"""Every Wan2.1 recipe builds through the CLI and instantiates its roles on the meta device (no weights)."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT

from oneforcing.cli import OneForcingCLI
from oneforcing.models.wan import WanBackbone, count_parameters

WAN_CONFIGS = sorted((REPO_ROOT / "configs" / "wan2.1").glob("*.yaml"))


@pytest.mark.parametrize("config", WAN_CONFIGS, ids=lambda p: p.stem)
def test_wan_recipe_instantiates_on_the_meta_device(config, monkeypatch):
    cli = OneForcingCLI(args=["--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                              "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.logger", "false"],
                        run=False)
    module = cli.model
    monkeypatch.setattr(WanBackbone, "load_weights", lambda self, path, strict=True: None)  # no weights here
    with torch.device("meta"):
        module.configure_model()
    assert module.hparams.num_frames == 21 and module.latent_shape() == (16, 60, 104)
    assert 1.40e9 < count_parameters(module.generator) < 1.45e9  # Wan2.1-T2V-1.3B in diffusers: 1.419 B
    if module.teacher is not None and "14B" in str(module.hparams.teacher_weights):
        assert 14.0e9 < count_parameters(module.teacher) < 14.6e9
    gan = [o for o in module.objectives if type(o).__name__ == "GAN"]
    if gan:
        head = count_parameters(gan[0].head)
        expected = {2: 36.2e6, 1: 13.4e6}[gan[0].num_registers]  # docs/algorithms.md §11, counted from shapes
        assert abs(head - expected) / expected < 0.02, head
    assert all(p.is_meta for p in module.generator.parameters())
