"""Toy-world metrics logged to TensorBoard during training (design §8).

Every ``every_n_steps`` optimizer steps (and at the end of training), global rank 0 generates one video per
caption of a fixed held-out set of real toy videos with the module's own sampler (``generate``: the
teacher's Euler sampler, a student's streaming sampler) and logs every metric of
``oneforcing.evaluation.metrics.evaluate_videos`` as ``eval/<metric>``. The other ranks wait at no cost;
nothing is reduced across ranks. Sampling noise is fixed (``seed``), so the curves move with the weights only.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from oneforcing.commands.evaluate import REAL_SEED, real_toy_set


class ToyEvaluation(L.Callback):
    """Args:
    every_n_steps: optimizer steps between evaluations (Lightning's global step).
    num_videos: held-out real videos (and generated ones) per evaluation.
    real_seed: the held-out toy stream.
    seed: sampling seed.
    """

    def __init__(self, every_n_steps: int = 200, num_videos: int = 32, real_seed: int = REAL_SEED, seed: int = 0) -> None:
        if every_n_steps < 1 or num_videos < 2:
            raise ValueError(f"ToyEvaluation needs every_n_steps >= 1 and num_videos >= 2, got {every_n_steps}, {num_videos}.")
        self.every_n_steps, self.num_videos, self.real_seed, self.seed = every_n_steps, num_videos, real_seed, seed
        self._real: tuple[torch.Tensor, list[str]] | None = None
        self._net = None
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "generate"):
            raise TypeError(f"ToyEvaluation needs a module with generate(prompts, seed); {type(pl_module).__name__} has none.")

    @rank_zero_only
    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from oneforcing.evaluation.feature_net import load_feature_net
        from oneforcing.evaluation.metrics import evaluate_videos

        step = trainer.global_step
        if step == self._last_step or trainer.logger is None:
            return
        self._last_step = step
        if self._real is None:
            self._real = real_toy_set(self.num_videos, self.real_seed, pl_module.hparams.num_frames,
                                      pl_module.hparams.frame_size)
            self._net = load_feature_net()
        real, prompts = self._real
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            fake = pl_module.generate(prompts, seed=self.seed).float().cpu()
        pl_module.train(was_training)
        metrics = evaluate_videos(fake, real, prompts, self._net)
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not math.isnan(value):
                trainer.logger.experiment.add_scalar(f"eval/{name}", value, step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module)
