"""Toy-world metrics logged to TensorBoard during training (docs/evaluation.md).

Every ``every_n_steps`` optimizer steps (and at the end of training), global rank 0 generates one video per
caption of a fixed held-out set of real toy videos with the module's own sampler (``generate``: the
teacher's Euler sampler, a student's streaming sampler) and logs every metric of
``oneforcing.toy.evaluation.evaluate_videos`` as ``eval/<metric>``, and the bank metrics
(``eval/bank_precision``, ``eval/bank_coverage``) on the bank set of ``oneforcing.toy.evaluation``
(the first ``num_videos // samples_per_caption`` captions, ``samples_per_caption`` samples each; 0 skips them).
The other ranks wait at no cost (under FSDP2 they sample too, as its forward gathers parameters
collectively); nothing is reduced across ranks. Sampling noise is fixed (``seed``), so the
curves move with the weights only.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from oneforcing.models.sharded import is_sharded
from oneforcing.toy.evaluation import (BANK_SIZE, REAL_SEED, SAMPLES_PER_CAPTION, BankSet, bank_set,
                                      real_toy_set, toy_metrics)
from oneforcing.toy.exact_bank import BANK_SEED


class ToyEvaluation(L.Callback):
    """Args:
    every_n_steps: optimizer steps between evaluations (Lightning's global step).
    num_videos: held-out real videos (and generated ones) per evaluation.
    real_seed: the held-out toy stream.
    seed: sampling seed.
    samples_per_caption: bank metrics: samples per caption (0: no bank metrics; each evaluation then samples
        ``num_videos`` videos instead of about twice as many).
    bank_size, bank_seed: bank metrics: clean videos per caption and their stream (the exact teacher's).
    """

    def __init__(self, every_n_steps: int = 200, num_videos: int = 32, real_seed: int = REAL_SEED, seed: int = 0,
                 samples_per_caption: int = SAMPLES_PER_CAPTION, bank_size: int = BANK_SIZE,
                 bank_seed: int = BANK_SEED) -> None:
        if every_n_steps < 1 or num_videos < 2 or samples_per_caption < 0 or bank_size < 1:
            raise ValueError(f"ToyEvaluation needs every_n_steps >= 1, num_videos >= 2, samples_per_caption >= 0 and "
                             f"bank_size >= 1, got {every_n_steps}, {num_videos}, {samples_per_caption}, {bank_size}.")
        self.every_n_steps, self.num_videos, self.real_seed, self.seed = every_n_steps, num_videos, real_seed, seed
        self.samples_per_caption, self.bank_size, self.bank_seed = samples_per_caption, bank_size, bank_seed
        self._real: tuple[torch.Tensor, list[str]] | None = None
        self._bank: BankSet | None = None
        self._net = None
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "generate"):
            raise TypeError(f"ToyEvaluation needs a module with generate(prompts, seed); {type(pl_module).__name__} has none.")

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On rank 0, or on every rank when the module is sharded (FSDP2 gathers parameters collectively)."""
        from oneforcing.toy.feature_net import load_feature_net

        step = trainer.global_step
        if step == self._last_step or trainer.logger is None or not (trainer.is_global_zero or is_sharded(pl_module)):
            return
        self._last_step = step
        hp = pl_module.hparams
        if self._real is None:
            self._real = real_toy_set(self.num_videos, self.real_seed, hp.num_frames, hp.frame_size)
            self._bank = bank_set(self._real[1], self.num_videos, self.samples_per_caption, self.bank_size,
                                  self.bank_seed, hp.num_frames, hp.frame_size)
            self._net = load_feature_net()
        real, prompts = self._real
        was_training = pl_module.training
        pl_module.eval()
        # the real set in one call, as before (samples do not depend on batching), under the training's autocast
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            metrics, _ = toy_metrics(lambda chunk, seed: pl_module.generate(chunk, seed=seed).float(), real, prompts,
                                     self._net, self.seed, batch_size=self.num_videos, bank=self._bank)
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not math.isnan(value):
                trainer.logger.experiment.add_scalar(f"eval/{name}", value, step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module)
