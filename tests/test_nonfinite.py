"""Non-finite losses skip their step, are counted, and stop the run with a clear message if they persist."""

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_TOY
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.diffusion import CausalDiffusion

TINY = dict(TINY_TOY)


class SometimesNaN(CausalDiffusion):
    def __init__(self, nan_calls: set[int]):
        super().__init__()
        self.nan_calls, self.calls = nan_calls, 0

    def generator_loss(self, ctx):
        loss, logs = super().generator_loss(ctx)
        self.calls += 1
        return (loss * float("nan"), logs) if self.calls in self.nan_calls else (loss, logs)


def run(tmp_path, nan_calls, max_steps, patience=20):
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_file({f"model.{k}": v for k, v in WanBackbone(WanConfig(**TINY)).state_dict().items()}, weights)
    module = DistillationModule([SometimesNaN(nan_calls)], backbone=TINY, generator_weights=str(weights),
                                num_frames=2, frame_size=16, generator_lr=1e-2, ema_start=None,
                                nonfinite_patience=patience)
    module.configure_model()
    initial = {k: v.clone() for k, v in module.generator.state_dict().items()}
    batch = {"caption": ["a large red circle moving left quickly"], "pixels": torch.rand(1, 2, 3, 16, 16) * 2 - 1}
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 10, batch_size=None))
    return module, trainer, initial


def test_a_nan_step_is_skipped_and_counted_and_training_continues(tmp_path):
    with pytest.warns(UserWarning, match="Non-finite generator loss"):
        module, trainer, initial = run(tmp_path, {1, 2}, max_steps=2)
    assert module.nonfinite.skipped == 2 and trainer.global_step == 2 and int(module.iteration) == 2
    assert all(torch.equal(initial[k], v) for k, v in module.generator.state_dict().items()), "NaN steps changed weights"
    module, trainer, initial = run(tmp_path, {1}, max_steps=3)
    assert module.nonfinite.skipped == 1 and trainer.global_step == 3
    assert any(not torch.equal(initial[k], v) for k, v in module.generator.state_dict().items())
    assert all(torch.isfinite(v).all() for v in module.generator.state_dict().values())


def test_persistent_nan_stops_the_run_with_a_clear_message(tmp_path):
    with pytest.raises(RuntimeError, match="non-finite for 3 consecutive steps"):
        run(tmp_path, set(range(1, 11)), max_steps=8, patience=2)
