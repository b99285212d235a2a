"""Logs sample videos for fixed prompts at every validation: an animated GIF grid in TensorBoard and files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from oneforcing.models.sharded import is_sharded
from oneforcing.video_io import log_gif_to_tensorboard, video_grid, write_video

DEFAULT_PROMPTS = (
    "a large red circle moving right slowly",
    "a small blue square moving left quickly",
    "a large yellow triangle moving down slowly",
    "a large green square moving up quickly",
)


class SampleVideoLogger(L.Callback):
    """Calls ``pl_module.generate(prompts, seed)`` on rank 0 after validation (on every rank when the module is
    sharded: FSDP2's forward gathers parameters collectively; rank 0 logs).

    Args:
        prompts: captions to sample (fixed, so that runs and steps compare).
        seed: noise seed for the first prompt (prompt i uses seed + i).
        write_files: also write ``<log_dir>/samples/step_NNNNNN.gif``.
    """

    def __init__(self, prompts: list[str] | None = None, seed: int = 0, write_files: bool = True) -> None:
        self.prompts = list(prompts or DEFAULT_PROMPTS)
        self.seed = seed
        self.write_files = write_files

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        log_dir = trainer.log_dir  # a collective (broadcast) under DDP: every rank must ask, not only rank 0
        if not (trainer.is_global_zero or is_sharded(pl_module)):
            return
        with trainer.precision_plugin.forward_context():  # the training's autocast (bf16 parameters need it)
            videos = pl_module.generate(self.prompts, seed=self.seed).float()  # (N, F, 3, H, W); sharded: every rank
        if not trainer.is_global_zero:
            return
        grid = video_grid(videos)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                log_gif_to_tensorboard(logger.experiment, "samples", grid, trainer.global_step)
        if self.write_files:
            out = Path(log_dir or ".") / "samples" / f"step_{trainer.global_step:06d}.gif"
            write_video(out, grid)
