"""``OneForcingCLI``: LightningCLI as the ``fit | validate | test | predict`` commands build it.

Its own module so that commands which instantiate a config as ``fit`` would (``plan``) import it without importing
the console script, which imports every command.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

import oneforcing.engines.deepspeed  # noqa: F401  (registers the `zero2` / `zero3` strategies by name)
import oneforcing.engines.fsdp2  # noqa: F401  (registers the `fsdp2` strategies by name)
from oneforcing.callbacks.progress import IterationProgressBar


class OneForcingCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data (``class_path`` / ``init_args`` in YAML)."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            parser_kwargs={"default_env": False},
        )

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        """The trainer, with ``IterationProgressBar`` as its progress bar unless the config names one or turns the
        bar off."""
        listed = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks = [*callbacks, IterationProgressBar()]
        return super()._instantiate_trainer(config, callbacks)
