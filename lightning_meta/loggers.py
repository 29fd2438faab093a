"""Weights & Biases logging that is offline by default and never blocks training."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_warn


class _NullRun:
    """Stands in for a W&B run when wandb is not installed: every call does nothing."""

    id = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class MetaWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline unless ``WANDB_MODE`` says otherwise, and never stops training.

    * Runs are written under ``./wandb`` (``wandb sync`` uploads them later); ``WANDB_MODE=online`` logs live.
    * With ``WANDB_MODE=online`` and no network, W&B's start-up error becomes a warning and the run continues
      offline.
    * Without the ``wandb`` package, the logger warns once and logs nothing; training runs as usual.

    All ``WandbLogger`` arguments apply.

    Example:
        >>> logger = MetaWandbLogger(project="lightning-meta")  # doctest: +SKIP
        >>> trainer = pl.Trainer(logger=logger)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        os.environ.setdefault("WANDB_MODE", "offline")
        try:
            import wandb
        except ImportError as error:
            rank_zero_warn(f"wandb is not importable ({error}); MetaWandbLogger logs nothing. `pip install wandb`")
            self._disable(kwargs)
            return
        kwargs.setdefault("settings", wandb.Settings(init_timeout=30, silent=True))
        self._disabled = False
        super().__init__(*args, **kwargs)

    def _disable(self, kwargs: dict[str, Any]) -> None:
        Logger.__init__(self)
        self._disabled, self._experiment, self._id = True, _NullRun(), None
        self._save_dir, self._name = kwargs.get("save_dir", "."), kwargs.get("name")
        self._project = kwargs.get("project", "lightning_logs")
        self._log_model, self._checkpoint_callback, self._prefix, self._wandb_init = False, None, "", {}

    @property
    def experiment(self):
        if self._disabled:
            return self._experiment
        try:
            return super().experiment
        except Exception as error:  # network or service failure: continue offline
            if self._wandb_init.get("mode") == "offline" or os.environ.get("WANDB_MODE") == "offline":
                raise
            rank_zero_warn(f"W&B could not start online ({error!r}); logging offline under ./wandb instead")
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return super().experiment

    def log_hyperparams(self, params: Any) -> None:
        if not self._disabled:
            super().log_hyperparams(params)

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        if not self._disabled:
            super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if not self._disabled:
            super().after_save_checkpoint(checkpoint_callback)

    def finalize(self, status: str) -> None:
        if not self._disabled:
            super().finalize(status)
