"""A progress bar that reads like a training run of ``max_steps`` iterations, not of epochs.

Lightning's ``RichProgressBar`` titles the bar ``Epoch 0/-2`` when ``max_epochs`` is -1 (our recipes stop on
``max_steps``), shows logged integers as ``6.000`` beside Lightning's ``v_num``, and rates as ``0.05it/s`` where a
slow step is read in seconds. This one titles it with the iteration reached of ``max_steps``, shows integral values
as integers, leaves ``v_num`` out, and gives rates under one per second as seconds per iteration.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
from rich.text import Text


def rate_text(speed: float | None) -> str:
    """``12.34 it/s``, or ``2.5 s/it`` below one iteration per second."""
    if not speed:
        return "– it/s"
    return f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it"


class SecondsPerIterationColumn(ProcessingSpeedColumn):
    def render(self, task) -> Text:
        return Text(rate_text(task.speed), style=self.style)


class IterationProgressBar(RichProgressBar):
    """``RichProgressBar`` for runs that stop on ``max_steps`` (see the module docstring)."""

    def configure_columns(self, trainer) -> list:
        columns = super().configure_columns(trainer)
        return [SecondsPerIterationColumn(style=self.theme.processing_speed)
                if isinstance(c, ProcessingSpeedColumn) else c for c in columns]

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return f"iteration {trainer.global_step}/{trainer.max_steps}"
        return super()._get_train_description(current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.train_progress_bar_id is not None and self.progress is not None:
            module_iteration = getattr(pl_module, "iteration", None)  # the distillation module counts iterations itself
            step = int(module_iteration) if module_iteration is not None else trainer.global_step
            self.progress.update(self.train_progress_bar_id,
                                 description=f"iteration {step}/{trainer.max_steps}" if trainer.max_steps > 0
                                 else self._get_train_description(trainer.current_epoch))

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in metrics.items()}
